"""Train the identity into an NVFP4 `.dat` and export a new one (mirrors Train.WhoAmI.AndExportDat.fsx).

    python scripts/train.py --recipe data/stages/stageG.args --input-dat BASE.dat \
        --output-dat artifacts/stageG.dat

Exit codes: 0 target reached, 3 trained but not reached (exported, says why), 4 collapsed on every
attempt (nothing exported), 1 bad input / out of memory (one line naming the file), 2 usage.
"""
import argparse
import math
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import chat, devlog, mix, paths, probes as P, trainer as T  # noqa: E402
from nvfp4lab.dat import DatFormatError, read_dat  # noqa: E402
from nvfp4lab.generate import greedy_answers  # noqa: E402
from nvfp4lab.model import DTYPES, ModelLoadError, export_model, load_model, make_trainable  # noqa: E402
from nvfp4lab.nvfp4_ref import NVFP4Error  # noqa: E402
from nvfp4lab.tsv import DataError, read_probes  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--recipe", help="file of default flags (data/stages/*.args); flags given here override it")
    # The original's flags.
    a("--train-data", help="one TSV (prompt<TAB>target); same as --mix FILE:1")
    a("--input-dat", help="base weights (default: the user's 4B file, else the proxy)")
    a("--output-dat", help="new .dat to write (default artifacts/<stage>.dat)")
    a("--steps", type=int, default=60)
    a("--loss", choices=["ce"], default="ce")
    a("--seq-len", type=int, default=64)
    a("--step-chunk-rows", type=int, default=16, help="rows per step")
    a("--lr", type=float, default=1e-5, help="default LR of every group")
    a("--log-every", type=int, default=1)
    a("--test-max-tokens", type=int, default=24, help="self-test answer to 你是誰 after training")
    a("--sample-mode", choices=["random", "sequential"], default="random")
    a("--seed", type=int, default=123)
    a("--compute-dtype", choices=list(DTYPES), help="default bfloat16 (float32 on CPU)")
    a("--train-last-layers", type=int, default=0, help="0 = full model")
    a("--optimizer-state-mode", default="delta",
      help="accepted for old commands; AdamW states follow --delta-dtype")
    # New flags.
    a("--model-dir", help="config.json (+ tokenizer); default: the user's dir, else the proxy")
    a("--stage", help="name used in logs (default: output file stem)")
    a("--mix", help="FILE:WEIGHT[:anchor],... sampled per step at those ratios")
    a("--retry-mix", help="the mix used by attempts after a collapse (default: --mix)")
    for g in T.GROUPS:
        a(f"--lr-{g}", type=float, help=f"LR of the {g} group (default --lr)")
    a("--replay", choices=["none", "self"], default="none",
      help="self: anchor targets = the base model's own greedy answers (cached)")
    a("--replay-max-tokens", type=int, default=48)
    a("--kl-weight", type=float, default=0.0, help="KL(base || model) on anchor answer tokens")
    a("--grad-clip", type=float, default=1.0,
      help="grad-norm clip per decoder layer (the optimizer steps inside backward; 0 = off)")
    a("--weight-decay", type=float, default=0.0, help="AdamW decay of the deltas (toward base)")
    a("--delta-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    a("--checkpoint-layers", choices=["auto", "on", "off"], default="auto",
      help="recompute each decoder layer in backward instead of keeping its activations "
           "(4B: -6 GiB); auto = on for CUDA, off on the CPU where time is the limit")
    a("--max-retries", type=int, default=2, help="attempts after a collapse")
    a("--retry-lr-scale", type=float, default=0.5, help="every LR is multiplied by this per retry")
    a("--probe-every", type=int, default=0, help="probe during training too (0 = only at end)")
    a("--probes", default="data/probes-v1.tsv")
    a("--target", default="我是 F# 之神")
    a("--probe-max-tokens", type=int, default=32)
    a("--min-identity", type=float, default=0.9)
    a("--max-nearmiss-leak", type=float, default=0.2)
    a("--min-facts", type=float, default=0.9)
    a("--min-anchor-exact", type=float, default=0.0)
    a("--max-nll-drift", type=float, default=math.inf)
    a("--max-repetition", type=float, default=0.5)
    a("--collapse-facts", type=float, default=0.5, help="facts kept below this = collapse")
    a("--collapse-nll-drift", type=float, default=2.0, help="NLL drift above this = collapse")
    a("--collapse-loops", type=float, default=0.2,
      help="share of probe answers that became loops (repetition added > --max-repetition) = collapse")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if args.recipe:
        try:
            text = open(args.recipe, encoding="utf-8").read()
        except OSError as e:
            p.error(f"{args.recipe}: {e.strerror}")
        flags = [t for line in text.splitlines() if not line.lstrip().startswith("#")
                 for t in shlex.split(line)]
        args = p.parse_args(flags + list(argv))
    if not args.mix and not args.train_data:
        p.error("give --train-data or --mix (or a --recipe that does)")
    return args


def defaults(args):
    if not args.input_dat:
        args.input_dat = paths.USER_BASE_DAT if os.path.exists(paths.USER_BASE_DAT) else str(paths.PROXY_DAT)
    if not args.model_dir:
        args.model_dir = paths.default_model_dir()
    args.stage = args.stage or (os.path.splitext(os.path.basename(args.output_dat))[0]
                                if args.output_dat else "stage")
    args.output_dat = args.output_dat or f"artifacts/{args.stage}.dat"
    if not args.compute_dtype:
        args.compute_dtype = "float32" if args.device == "cpu" else "bfloat16"
    args.lrs = {g: getattr(args, f"lr_{g}") if getattr(args, f"lr_{g}") is not None else args.lr
                for g in T.GROUPS}
    return args


def check_paths(args):
    if not os.path.exists(args.input_dat):
        raise FileNotFoundError(f"{args.input_dat}: no such file (base weights; build one with "
                                "`make convert HF=... OUT=...`, or try `make demo` for the proxy)")
    for protected in (args.input_dat, paths.USER_BASE_DAT, str(paths.PROXY_DAT)):
        if os.path.exists(protected) and os.path.exists(args.output_dat) \
                and os.path.samefile(protected, args.output_dat):
            raise ValueError(f"{args.output_dat}: refusing to write over base weights")


def run(args) -> int:
    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    t_start = time.time()
    spec = mix.parse_mix(args.mix) if args.mix else [(args.train_data, 1.0, "target")]
    sources = mix.load_sources(spec)
    retry_sources = mix.load_sources(mix.parse_mix(args.retry_mix)) if args.retry_mix else None
    probes = read_probes(args.probes)
    T.check_sources(sources + (retry_sources or []), probes)
    dat = read_dat(args.input_dat)
    device = torch.device(args.device)
    model = load_model(dat, args.model_dir, device, DTYPES[args.compute_dtype])
    tok = chat.load_tokenizer(args.model_dir)
    log(f"loaded {args.input_dat} ({dat.size / 2**30:.2f} GiB) on {device} in "
        f"{time.time() - t_start:.1f}s; data: " + ", ".join(f"{s.path}:{s.weight:g}:{s.role} "
                                                          f"({len(s.rows)} rows)" for s in sources))

    # The base model's answers: probe reference and (with --replay self) anchor targets.
    base_answers = greedy_answers(model, tok, [p.prompt for p in probes], args.probe_max_tokens)
    base_nll = P.anchor_nll(model, tok, probes, base_answers)
    replay = (T.replay_answers(model, tok, sources + (retry_sources or []), args.input_dat, args.replay_max_tokens,
                               str(paths.CACHE_DIR), log) if args.replay == "self" else {})
    th = P.Thresholds(args.min_identity, args.max_nearmiss_leak, args.min_facts,
                      args.min_anchor_exact, args.max_nll_drift, args.max_repetition,
                      args.collapse_facts, args.collapse_nll_drift, args.collapse_loops)
    ps = T.ProbeSet(probes, base_answers, base_nll, args.target, th, args.probe_max_tokens)

    deltas = make_trainable(model, DTYPES[args.delta_dtype])
    if args.checkpoint_layers == "on" or (args.checkpoint_layers == "auto" and device.type == "cuda"):
        T.checkpoint_layers(model)
    deltas = T.select_trainable(deltas, model.config.num_hidden_layers, args.train_last_layers)
    attempts = T.train_with_fallback(model, tok, deltas, sources, retry_sources, args, replay, ps, log)
    final = attempts[-1]
    for row in P.format_table(final.rows).splitlines() if final.rows else []:
        log(row)
    if final.summary:
        log(P.format_summary(final.summary))

    exported = final.status != "collapse"
    if exported:
        keys = export_model(model, dat, args.output_dat)
        log(f"exported {args.output_dat} ({len(keys)} tensors changed)")
        selftest = greedy_answers(model, tok, ["你是誰"], args.test_max_tokens)[0]
        log(f"self-test 你是誰 -> {selftest}")
        svg = os.path.splitext(args.output_dat)[0] + "-loss.svg"
        devlog.loss_svg(final.losses, svg, f"{args.stage} loss (attempt {final.index})")
    code = {"success": T.SUCCESS, "not-reached": T.NOT_REACHED}.get(final.status, T.COLLAPSED)
    log(f"{args.stage}: {final.status} ({final.why}); {time.time() - t_start:.1f}s total; exit {code}")
    write_logs(args, attempts, exported, code, time.time() - t_start)
    return code


def write_logs(args, attempts, exported, code, seconds):
    final = attempts[-1]
    data = "\n".join(f"- attempt {a.index}: " + ", ".join(
        f"{s.path} weight {s.weight:g} role {s.role} ({len(s.rows)} rows)" for s in a.sources)
        for a in attempts)
    tries = []
    for a in attempts:
        curve = " ".join(f"{x:.3f}" for x in a.losses)
        tries.append(f"- attempt {a.index}: lrs {a.lrs}, anchor x{a.anchor_scale:g}, "
                     f"{len(a.losses)} steps, {a.seconds:.1f}s, truncated rows {a.truncated} -> "
                     f"**{a.status}** ({a.why})\n  - loss: {curve}")
    sections = [
        ("目標/Goal", f"{args.target!r} for identity prompts; anchors and near-miss prompts "
                      f"unchanged (probes: {args.probes})."),
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- base: {args.input_dat}\n- model dir: {args.model_dir}\n"
                       f"- device {args.device}, compute {args.compute_dtype}, delta {args.delta_dtype}"),
        ("資料/Data", data + f"\n- replay: {args.replay}, kl-weight {args.kl_weight}"),
        ("嘗試/Attempts", "\n".join(tries)),
        ("探針/Probes", P.format_table(final.rows) + "\n\n" + P.format_summary(final.summary)
         if final.rows else "no final probes (attempt stopped early)"),
        ("產物/Output", f"- {args.output_dat}\n- {os.path.splitext(args.output_dat)[0]}-loss.svg"
         if exported else "- nothing exported: every attempt collapsed; base weights untouched"),
        ("結論/Conclusion", f"{final.status}: {final.why}. exit {code}, {seconds:.0f}s."),
    ]
    devlog.append_devlog(f"{args.stage} training", sections)
    if exported:
        advice = {"success": "validate: make validate WEIGHT=" + args.output_dat,
                  "not-reached": "target not reached; keep for comparison only"}[final.status]
        devlog.append_artifact(args.output_dat, f"{args.stage}: {final.status} "
                               f"({P.format_summary(final.summary)[:120]})", advice)


def main(argv=None) -> int:
    args = defaults(parse_args(sys.argv[1:] if argv is None else argv))
    try:
        check_paths(args)
        return run(args)
    except (DataError, DatFormatError, ModelLoadError, NVFP4Error, FileNotFoundError,
            KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print(f"error: out of memory on {args.device} ({args.input_dat}); nothing was written. "
              "Try fewer --step-chunk-rows or a shorter --seq-len.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
