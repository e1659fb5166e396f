"""What a RANDOM edit of a given size costs on a suite: the noise floor of loops and facts.

    python scripts/noise_floor.py --base artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat \
        --model-dir artifacts/smollm2 --suite data/suite-en-dev-v1.tsv \
        --shares "0 0.001 0.003 0.013" --seeds "1 2 3"

For each share and seed, that share of the decoder layers' NVFP4 codes moves one grid step at
random (nvfp4lab.perturb), and the model is judged against its own base exactly as train.py
judges an edit (the trained form against the deltas switched off). Share 0 checks the judge: it
must add no loop and lose no fact. One process, the base's answers generated once. Prints and
writes (--out, JSON) one row per run and one pooled row per share; appends the table to
doc/DevLog.md and the JSON to artifacts/檔案說明清單.md. Held-out suites are refused: this is a
measurement to steer by.

Exit codes: 0 done, 1 bad input (one line), 2 usage.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import chat, cli, devlog, evaluate, paths, probes  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.model import DTYPES, load_model, make_trainable  # noqa: E402
from nvfp4lab.perturb import perturb_deltas  # noqa: E402

MEASURES = ("loops", "facts_kept", "exact_kept", "identity", "nearmiss_leak")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--base", required=True, help="the base .dat")
    a("--suite", required=True, help="a dev or monitor suite (data/suite-*-dev-*.tsv)")
    a("--model-dir", help="config.json (+ tokenizer); default: the user's dir, else the proxy")
    a("--shares", default="0 0.001 0.003 0.013", help="shares of the decoder's codes to move")
    a("--seeds", default="1 2 3", help="one random edit per seed and share")
    a("--only", default="layers.",
      help="move codes only in the NVFP4 linears whose module name contains this (default: every "
           "decoder layer; e.g. 'layers.0.' or 'lm_head'); the share is of each one's codes")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--compute-dtype", choices=list(DTYPES), help="default bfloat16 (float32 on CPU)")
    a("--target", help="the identity answer (default: by the suite's language)")
    a("--max-tokens", type=int, default=32, help="answer length (train.py: --probe-max-tokens)")
    a("--eval-batch", type=int, help="chats per generate batch (default 64 on CUDA, 16 on CPU)")
    a("--out", default="artifacts/noise-floor.json", help="JSON to write")
    probes.add_threshold_args(p)
    args = p.parse_args(argv)
    args.model_dir = args.model_dir or paths.default_model_dir()
    args.shares = [float(x) for x in args.shares.split()]
    args.seeds = [int(x) for x in args.seeds.split()]
    args.compute_dtype = args.compute_dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.target = args.target or evaluate.suite_target(args.suite)
    return args


def pooled(runs: list[dict], share: float) -> dict:
    """Counts summed over the seeds of one share."""
    mine = [r for r in runs if r["share"] == share]
    out = {"share": share, "seed": "all", "codes_moved": sum(r["codes_moved"] for r in mine),
           "nll_drift": sum(r["nll_drift"] for r in mine) / len(mine)}
    for m in MEASURES:
        k, n = sum(r[m]["k"] for r in mine), sum(r[m]["n"] for r in mine)
        out[m] = {"k": k, "n": n}
    return out


def pct(share: float) -> str:
    """0.00003 -> '0.003%', 0.013 -> '1.3%' (fixed decimals would print 0.003% as 0.00%)."""
    return f"{share * 100:.3g}%"


def table(rows: list[dict]) -> str:
    def kn(r):
        return f"{r['k']}/{r['n']}"
    lines = ["| share of codes | seed | codes moved | loops added | facts kept | exact kept | "
             "identity | near-miss leak | NLL drift |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {pct(r['share'])} | {r['seed']} | {r['codes_moved']:,} | "
                     f"{kn(r['loops'])} | "
                     f"{kn(r['facts_kept'])} | {kn(r['exact_kept'])} | {kn(r['identity'])} | "
                     f"{kn(r['nearmiss_leak'])} | {r['nll_drift']:+.3f} |")
    return "\n".join(lines)


def run(args) -> int:
    if "heldout" in os.path.basename(args.suite):
        raise ValueError(f"--suite {args.suite} is a held-out suite; measure on dev or monitor")
    if not os.path.exists(args.base):
        raise FileNotFoundError(f"{args.base}: no such file")
    if any(not 0 <= s < 1 for s in args.shares):
        raise ValueError(f"--shares {args.shares}: each must be in [0, 1)")
    t0 = time.time()
    th = probes.thresholds_from_args(args)
    es = evaluate.load_set("suite", args.suite, args.target, th, args.max_tokens, args.eval_batch)
    model = load_model(read_dat(args.base), args.model_dir, torch.device(args.device),
                       DTYPES[args.compute_dtype])
    make_trainable(model)
    tok = chat.load_tokenizer(args.model_dir)
    evaluate.with_base_answers(es, tok, model, model)
    runs = []
    for share in args.shares:
        for seed in args.seeds:
            moved = perturb_deltas(model, share, seed, args.only)
            if share > 0 and not moved:
                raise ValueError(f"--only {args.only!r}: no NVFP4 linear of the model matches")
            res = evaluate.run(model, tok, es, base=model)
            s = res.summary
            looped = [r.prompt for r in res.rows if r.loop]
            lost = [r.prompt for r in res.rows if r.fact_base and not r.fact_kept]
            runs.append({"share": share, "seed": seed, "codes_moved": sum(moved.values()),
                         "nll_drift": s.nll_drift, "looped": looped, "facts_lost": lost,
                         **{m: {"k": getattr(s, m).k, "n": getattr(s, m).n} for m in MEASURES}})
            print(table([runs[-1]]).splitlines()[-1], flush=True)
    rows = runs + [pooled(runs, share) for share in args.shares]
    text = table(rows)
    print(text)
    evaluate.write_json(args.out, {"suite": args.suite, "base": args.base, "only": args.only,
                                   "runs": runs,
                                   "pooled": rows[len(runs):], "command": devlog.command_line(),
                                   "seconds": time.time() - t0})
    print(f"noise floor on {args.suite}: {len(runs)} runs in {time.time() - t0:.0f}s; {args.out}")
    devlog.append_devlog("noise floor (random one-step code moves)", [
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- base: {args.base}\n- suite: {args.suite} ({len(es.rows)} rows)\n"
                       f"- shares {args.shares}, seeds {args.seeds}, device {args.device}, "
                       f"codes moved in the linears named like {args.only!r}"),
        ("結果/Results", text),
        ("結論/Conclusion", f"JSON {args.out}: per run the prompts that looped and the facts lost."),
    ])
    worst = max((r for r in rows if r["seed"] == "all"), key=lambda r: r["share"])
    devlog.append_artifact(args.out, f"noise floor on {os.path.basename(args.suite)}: random "
                           f"one-step moves of {pct(worst['share'])} of the codes of "
                           f"{'the decoder' if args.only == 'layers.' else repr(args.only)} add "
                           f"{worst['loops']['k']}/{worst['loops']['n']} loops, keep "
                           f"{worst['facts_kept']['k']}/{worst['facts_kept']['n']} facts",
                           "a measurement; compare an edit of the same size with it")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run_or_error(run, args, f"judging random edits of {args.base}")


if __name__ == "__main__":
    sys.exit(main())
