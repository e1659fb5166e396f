"""Judge a trained edit with one group of its tensors put back to the base's, group by group.

    python scripts/revert_groups.py --base artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat \
        --edit artifacts/sweep/sweep-s0-v19-s28.dat --suite data/suite-en-dev-v3.tsv \
        --model-dir artifacts/smollm2 --thresholds-of data/stages/method-study-en.args

Rows: the edit as it is, then the edit with the embedding, the final norm, the head and each band of
--band-width layers put back (nvfp4lab/revert.py), then the base itself (everything put back).
Per row: the weights the group changed, the criteria missed, the suite's rates, and the suite
lines whose row was fixed or broken against the edit as it is (evaluate.is_fault). Where the
identity lives and where the lost facts come from says where a recipe should move less
(doc/METHOD.md "Rounds 32-33"). Judges with the same suite, answer length, dtype and batch as
eval.py (and --thresholds-of as eval.py). Reads only; writes --out (default
`<edit stem>.revert.json`) and appends the table to doc/DevLog.md.

Exit codes: 0 judged, 1 bad input (one line naming the file), 2 usage.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import chat, cli, config, devlog, evaluate, paths, probes, revert  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.merge import check_same_layout  # noqa: E402
from nvfp4lab.model import DTYPES, load_model  # noqa: E402

MEASURES = ("identity", "nearmiss_leak", "context_leak", "greeting_intro", "facts_kept", "loops")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--base", required=True, help="the .dat the edit was trained from")
    a("--edit", required=True, help="the trained .dat")
    a("--suite", required=True, help="suite to judge on (the dev suite: data/suite-*-dev-*.tsv)")
    a("--model-dir", help="config.json (+ tokenizer); default: the user's dir, else the proxy")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--compute-dtype", choices=list(DTYPES), help="default bfloat16 (float32 on CPU)")
    a("--max-tokens", type=int, default=32, help="answer length (train.py: --probe-max-tokens)")
    a("--eval-batch", type=int, help="chats per generate batch (default 64 on CUDA, 16 on CPU)")
    a("--band-width", type=int, default=5, help="layers put back together (1: each layer)")
    a("--out", help="JSON to write (default: <edit stem>.revert.json)")
    a("--thresholds-of", metavar="RECIPE", help="judge by a recipe's thresholds (as eval.py)")
    probes.add_threshold_args(p)
    config.recipe_threshold_defaults(p, argv)
    args = p.parse_args(argv)
    if args.band_width < 1:
        p.error(f"--band-width {args.band_width}: must be >= 1")
    args.model_dir = args.model_dir or paths.default_model_dir()
    args.compute_dtype = args.compute_dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.out = args.out or os.path.splitext(args.edit)[0] + ".revert.json"
    return args


def faults(result) -> dict[int, str]:
    """Suite line -> verdict of each row that is a fault (a miss, a leak, "changed (fact lost)",
    a loop ...): read_revert.py tells the lost facts among the lines fixed by them."""
    return {r.line: r.verdict for r in result.rows if evaluate.is_fault(r.verdict)}


def table(rows: list[dict]) -> str:
    out = ["| put back | weights changed there | criteria missed | identity | near-miss leak | "
           "context leak | greeting | facts kept | loops added | NLL drift | lines fixed | "
           "lines broken |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        rates = [f"{getattr(s, m).k}/{getattr(s, m).n}" for m in MEASURES]
        lines = lambda xs: ", ".join(map(str, xs)) or "–"   # noqa: E731
        missed = "collapse" if r["verdict"] == "collapse" else r["missed"]
        out.append(f"| {r['put_back']} | {r['changed']}/{r['weights']} | {missed} | "
                   + " | ".join(rates) + f" | {s.nll_drift:+.3f} | {lines(r['fixed'])} | "
                   f"{lines(r['broken'])} |")
    return "\n".join(out)


def run(args) -> int:
    t0 = time.time()
    for path in (args.base, args.edit):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
    base_dat, edit_dat = read_dat(args.base), read_dat(args.edit)
    check_same_layout(base_dat, edit_dat)
    th = probes.thresholds_from_args(args)
    es = evaluate.load_set("suite", args.suite, evaluate.suite_target(args.suite), th,
                           args.max_tokens, args.eval_batch)
    device, dtype = torch.device(args.device), DTYPES[args.compute_dtype]
    edit = load_model(edit_dat, args.model_dir, device, dtype)
    base = load_model(base_dat, args.model_dir, device, dtype)
    tok = chat.load_tokenizer(args.model_dir)
    evaluate.with_base_answers(es, tok, edit, base)
    groups = revert.tensors_by_group(edit)
    changes = revert.changed_by_group(base_dat, edit_dat)
    parts = revert.default_parts(edit.config.num_hidden_layers, args.band_width)
    parts = [("nothing", [])] + parts + [("everything", sorted(groups))]
    rows, first = [], None
    for label, part in parts:
        with revert.reverted(edit, base, part):
            result = evaluate.run(edit, tok, es, base=base, profile=True)
        verdicts = faults(result)
        bad = set(verdicts)
        first = bad if first is None else first
        counted = [changes.get(g, (0, 0)) for g in (part or changes)]
        changed, weights = sum(c for c, _ in counted), sum(t for _, t in counted)
        rows.append({"put_back": label, "groups": part,
                     "changed": changed, "weights": weights,
                     "missed": len(evaluate.missed(result.summary, th)),
                     "verdict": result.summary.verdict, "summary": result.summary,
                     "target_tokens": result.target_tokens,
                     "fixed": sorted(first - bad), "broken": sorted(bad - first),
                     "faults": verdicts})
        print(f"[{label}] {result.summary.verdict}: {result.summary.why} ({result.seconds:.1f}s)",
              flush=True)
    text = table(rows)
    print(text)
    seconds = time.time() - t0
    evaluate.write_json(args.out, {"version": 1, "base": args.base, "edit": args.edit,
                                   "suite": args.suite, "thresholds": th,
                                   "command": devlog.command_line(), "seconds": seconds,
                                   "rows": rows})
    print(f"revert_groups {args.edit} on {args.suite}: {len(rows)} judgments in {seconds:.1f}s; "
          f"{args.out}")
    devlog.append_devlog(f"revert_groups {os.path.basename(args.edit)}", [
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- base: {args.base}\n- edit: {args.edit}\n- suite: {args.suite} "
                       f"({len(es.rows)} rows), device {args.device}, {args.compute_dtype}"),
        ("結果/Results", text),
        ("結論/Conclusion", f"{len(rows)} judgments in {seconds:.1f}s; JSON {args.out}"),
    ])
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run_or_error(run, args, f"judging {args.edit}")


if __name__ == "__main__":
    sys.exit(main())
