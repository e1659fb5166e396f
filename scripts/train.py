"""Train the identity into an NVFP4 `.dat` and export a new one (mirrors Train.WhoAmI.AndExportDat.fsx).

    python scripts/train.py --recipe data/stages/stageG.args --input-dat BASE.dat \
        --output-dat artifacts/stageG.dat

Which set judges what (doc/ARCHITECTURE.md): --monitor is judged during training (--probe-every)
and at the end of every attempt, and a collapse there rolls back and retries; --heldout is judged
ONCE, after the last attempt, for the verdict and `<output stem>.eval.json`; it never chooses
between attempts. Old recipes without either keep their --probes file as before (judged after
each attempt and for the verdict), but never during training: that would tune on held-out rows.

Exit codes: 0 target reached, 3 trained but not reached (exported, says why), 4 collapsed on every
attempt or on the held-out set (nothing exported), 1 bad input / out of memory (one line naming the
file), 2 usage.
"""
import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import chat, devlog, evaluate as E, mix, nullspace, paths, probes as P, trainer as T  # noqa: E402
from nvfp4lab.dat import DatFormatError, read_dat  # noqa: E402
from nvfp4lab.generate import greedy_answers  # noqa: E402
from nvfp4lab.model import DTYPES, ModelLoadError, export_model, load_model, make_trainable  # noqa: E402
from nvfp4lab.nvfp4_ref import NVFP4Error  # noqa: E402
from nvfp4lab.suite import check_disjoint  # noqa: E402
from nvfp4lab.update_report import format_report, update_report  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402


LEGACY_PROBES = "data/probes-v1.tsv"


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
    a("--mix", help="FILE:WEIGHT[:ROLE],... sampled per step at those ratios; ROLE target "
                    "(default), anchor (keep the base's answers) or neighbour (a near miss: kept "
                    "like an anchor, and the identity pushed down by --unlikelihood-weight)")
    a("--retry-mix", help="the mix used by attempts after a collapse (default: --mix)")
    for g in T.GROUPS:
        a(f"--lr-{g}", type=float, help=f"LR of the {g} group (default --lr)")
    a("--replay", choices=["none", "self"], default="none",
      help="self: anchor targets = the base model's own greedy answers (cached)")
    a("--replay-max-tokens", type=int, default=48)
    a("--kl-weight", type=float, default=0.0,
      help="KL(base || model) on the answer tokens of anchor and neighbour rows")
    a("--unlikelihood-weight", type=float, default=0.0,
      help="weight of -log(1 - p) of the --target answer, teacher-forced on each neighbour row "
           "(from the first token where it leaves the row's own answer); 0 = off")
    a("--context-share", type=float, default=0.0,
      help="share of neighbour rows asked as turn 2, after an identity prompt answered with the "
           "target (they learn the base's single-turn answer, without KL); 0 = off")
    a("--identity-context-share", type=float, default=0.0,
      help="share of identity rows asked after one or two ordinary exchanges (anchor prompts with "
           "the base's answers), so the edit holds in the middle of a chat; 0 = off")
    a("--lr-schedule", choices=T.SCHEDULES, default="constant",
      help="constant, or cosine down to 0 at the last step (after --warmup-steps)")
    a("--warmup-steps", type=int, default=0, help="linear LR warm-up over the first N steps")
    a("--protect-neighbours", type=float, default=0.0, metavar="TOL",
      help="project every projection's update onto the null space of the inputs the neighbour "
           "rows send into it (eigenvalues <= TOL x the largest; AlphaEdit-style; 0 = off)")
    a("--keep-best", action="store_true",
      help="keep the best --monitor checkpoint of each attempt (trainer.monitor_score) and end the "
           "attempt on it; a monitor collapse after a kept checkpoint stops early instead of "
           "rolling back")
    a("--patience", type=int, default=0,
      help="with --keep-best: stop an attempt after N monitor rounds without a better score (0 = off)")
    a("--grad-clip", type=float, default=1.0,
      help="grad-norm clip per decoder layer (the optimizer steps inside backward; 0 = off)")
    a("--weight-decay", type=float, default=0.0, help="AdamW decay of the deltas (toward base)")
    a("--delta-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    a("--checkpoint-layers", choices=["auto", "on", "off"], default="auto",
      help="recompute each decoder layer in backward instead of keeping its activations "
           "(4B: -6 GiB); auto = on for CUDA, off on the CPU where time is the limit")
    a("--max-retries", type=int, default=2, help="attempts after a collapse")
    a("--retry-lr-scale", type=float, default=0.5, help="every LR is multiplied by this per retry")
    a("--probe-every", type=int, default=0,
      help="judge the --monitor set every N steps too (0 = only after each attempt)")
    a("--monitor", help="suite judged during training and after each attempt (collapse -> retry)")
    a("--heldout", help="suite judged once after training: the verdict and <out>.eval.json")
    a("--probes", help=f"old probe file (kind<TAB>prompt[<TAB>expect]) for the verdict when no "
                       f"--heldout is given (default {LEGACY_PROBES})")
    a("--target", default="我是 F# 之神")
    a("--probe-max-tokens", type=int, default=32, help="answer length when judging")
    a("--eval-batch", type=int, help="chats per generate batch when judging (default 64 on "
                                     "CUDA, 16 on the CPU)")
    P.add_threshold_args(p)
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
    if not args.heldout and not args.probes:
        args.probes = LEGACY_PROBES
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


def same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def check_splits(args) -> None:
    """The held-out set judges the run once, after training; it may never be the set that
    monitors training, because the monitor decides rollbacks and retries, i.e. chooses."""
    final_flag, final = ("--heldout", args.heldout) if args.heldout else ("--probes", args.probes)
    if args.monitor:
        if same_file(args.monitor, final):
            raise ValueError(f"--monitor {args.monitor} is the held-out set ({final_flag} {final}); "
                             "monitor with a separate suite (data/suite-*-monitor-*.tsv)")
        if "heldout" in os.path.basename(args.monitor):
            raise ValueError(f"--monitor {args.monitor} is a held-out suite (its name says so); "
                             "monitor with data/suite-*-monitor-*.tsv")
    elif args.probe_every > 0:
        raise ValueError(f"--probe-every {args.probe_every} without --monitor would judge the "
                         f"held-out set {final} during training; give --monitor "
                         "data/suite-*-monitor-*.tsv, or --probe-every 0")


def run(args) -> int:
    log_lines = []

    def log(msg):
        print(msg, flush=True)
        log_lines.append(msg)

    t_start = time.time()
    spec = mix.parse_mix(args.mix) if args.mix else [(args.train_data, 1.0, "target")]
    sources = mix.load_sources(spec)
    retry_sources = mix.load_sources(mix.parse_mix(args.retry_mix)) if args.retry_mix else None
    all_sources = sources + (retry_sources or [])
    th = P.thresholds_from_args(args)
    load = lambda split, path, legacy=False: E.load_set(  # noqa: E731
        split, path, args.target, th, args.probe_max_tokens, args.eval_batch, legacy)
    monitor = load("monitor", args.monitor) if args.monitor else None
    final = load("heldout", args.heldout) if args.heldout else load("probes", args.probes, True)
    for es in (monitor, final if args.heldout else None):
        if es is not None:   # suite prompts are never trained on
            check_disjoint(es.rows, sorted({s.path for s in all_sources}))
    if not args.heldout:
        T.check_sources(all_sources, final.rows)
    # Old recipes without --monitor keep judging their attempts on their --probes file; with
    # --heldout nothing but a NaN loss judges an attempt unless a monitor is given.
    attempt_set = monitor or (None if args.heldout else final)
    dat = read_dat(args.input_dat)
    device = torch.device(args.device)
    model = load_model(dat, args.model_dir, device, DTYPES[args.compute_dtype])
    tok = chat.load_tokenizer(args.model_dir)
    log(f"loaded {args.input_dat} ({dat.size / 2**30:.2f} GiB) on {device} in "
        f"{time.time() - t_start:.1f}s; data: " + ", ".join(f"{s.path}:{s.weight:g}:{s.role} "
                                                          f"({len(s.rows)} rows)" for s in sources))
    log(f"judging: monitor {args.monitor or '-'} ({len(monitor.rows) if monitor else 0} rows), "
        f"verdict on {final.path} ({len(final.rows)} rows, {final.split})"
        + (f"; --probes {args.probes} not read (--heldout judges the run)"
           if args.heldout and args.probes else ""))

    # The base model's answers: reference of the monitor set and (with --replay self) anchor
    # targets. The held-out set's base answers are made after training, with the deltas off.
    if attempt_set is not None:
        E.with_base_answers(attempt_set, tok, model, model)
    replay = (T.replay_answers(model, tok, all_sources, args.input_dat, args.replay_max_tokens,
                               str(paths.CACHE_DIR), log) if args.replay == "self" else {})

    deltas = make_trainable(model, DTYPES[args.delta_dtype])
    if args.checkpoint_layers == "on" or (args.checkpoint_layers == "auto" and device.type == "cuda"):
        T.checkpoint_layers(model)
    deltas = T.select_trainable(deltas, model.config.num_hidden_layers, args.train_last_layers)
    projectors = (neighbour_projectors(args, model, tok, all_sources, replay, log)
                  if args.protect_neighbours > 0 else None)
    attempts = T.train_with_fallback(model, tok, deltas, sources, retry_sources, args, replay,
                                     attempt_set, log, change_reporter(model, dat, log), projectors)
    last = attempts[-1]
    judged, result = attempt_set, last.result
    if last.status != "collapse" and final is not attempt_set:
        # The one look at the held-out set: after the last attempt, never to choose one.
        E.with_base_answers(final, tok, model, model)
        judged, result = final, E.run(model, tok, final, base=model)
        log(f"{final.split} {final.path} judged once after training ({result.seconds:.1f}s)")
    status, why = ((result.summary.verdict, result.summary.why) if result is not None
                   else (last.status, last.why))
    if result is not None:
        for row in E.row_table(result.rows).splitlines():
            log(row)
        log(P.format_summary(result.summary.legacy()))
        log(E.rates_table(result.summary))

    exported = status != "collapse"
    if exported:
        keys = export_model(model, dat, args.output_dat)
        log(f"exported {args.output_dat} ({len(keys)} tensors changed)")
        selftest = greedy_answers(model, tok, ["你是誰"], args.test_max_tokens)[0]
        log(f"self-test 你是誰 -> {selftest}")
        svg = os.path.splitext(args.output_dat)[0] + "-loss.svg"
        devlog.loss_svg(last.losses, svg, f"{args.stage} loss (attempt {last.index})")
    code = {"success": T.SUCCESS, "not-reached": T.NOT_REACHED}.get(status, T.COLLAPSED)
    seconds = time.time() - t_start
    json_file = E.json_path(args.output_dat)
    E.write_json(json_file, eval_doc(args, attempts, judged, result, status, why, exported, code,
                                     seconds))
    log(f"{args.stage}: {status} ({why}); {seconds:.1f}s total; exit {code}; judgment {json_file}")
    write_logs(args, attempts, result, status, why, exported, code, seconds)
    return code


def change_reporter(model, dat, log):
    """After each attempt: what it changed in the stored NVFP4 codes and scales, per group. A
    group at 0% did not move (its LR is below the NVFP4 step: README, "How the LR relates to the
    NVFP4 step")."""
    def report(att):
        att.report = update_report(model, dat)
        log(f"[attempt {att.index}] stored weights changed:\n" + format_report(att.report))
    return report


def neighbour_projectors(args, model, tok, sources, replay, log) -> dict:
    """--protect-neighbours: null-space projectors of the inputs the neighbour rows feed in."""
    rows = [r for s in sources if s.role == "neighbour" for r in s.rows]
    projectors = nullspace.neighbour_projectors(model, tok, rows, replay, args.seq_len,
                                                args.protect_neighbours)
    free = sum(int(round(float(p.trace()))) for p in projectors.values())
    log(f"protect-neighbours: {len(projectors)} projections, {free} free input directions in all "
        f"(tolerance {args.protect_neighbours:g}, {min(len(rows), 256)} neighbour rows)")
    return projectors


def eval_doc(args, attempts, judged, result, status, why, exported, code, seconds) -> dict:
    """<output stem>.eval.json: the verdict's judgment (held-out set, or the monitor's when every
    attempt collapsed), every attempt's monitor summary, the files and the command."""
    info = {"weight": args.output_dat if exported else None, "exported": exported,
            "base": args.input_dat, "model_dir": args.model_dir, "stage": args.stage,
            "suites": {"monitor": args.monitor, "heldout": args.heldout,
                       "probes": None if args.heldout else args.probes},
            "command": devlog.command_line(), "exit": code, "total_seconds": seconds,
            "attempts": [{"index": a.index, "status": a.status, "why": a.why, "lrs": a.lrs,
                          "anchor_scale": a.anchor_scale, "steps": len(a.losses),
                          "seconds": a.seconds,
                          "monitor": a.result.summary if a.result is not None else None,
                          "changed": [vars(g) for g in a.report]}
                         for a in attempts]}
    if result is None:   # NaN loss on every attempt: nothing was judged
        return {"version": 1, "verdict": status, "why": why, "split": None, "suite": None,
                "target": args.target, "thresholds": P.thresholds_from_args(args), **info,
                "summary": None, "rows": []}
    doc = E.report(result, judged, **info)
    doc["verdict"], doc["why"] = status, why
    return doc


def write_logs(args, attempts, result, status, why, exported, code, seconds):
    last = attempts[-1]
    data = "\n".join(f"- attempt {a.index}: " + ", ".join(
        f"{s.path} weight {s.weight:g} role {s.role} ({len(s.rows)} rows)" for s in a.sources)
        for a in attempts)
    tries = []
    for a in attempts:
        curve = " ".join(f"{x:.3f}" for x in a.losses)
        tries.append(f"- attempt {a.index}: lrs {a.lrs}, anchor x{a.anchor_scale:g}, "
                     f"{len(a.losses)} steps, {a.seconds:.1f}s, truncated rows {a.truncated} -> "
                     f"**{a.status}** ({a.why})\n  - loss: {curve}"
                     + (f"\n\n{format_report(a.report)}\n" if a.report else ""))
    judged = (f"held-out {args.heldout}" if args.heldout else f"probes {args.probes}")
    sections = [
        ("目標/Goal", f"{args.target!r} for identity prompts; ordinary and near-miss prompts "
                      f"unchanged (monitor: {args.monitor or '-'}; verdict: {judged})."),
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- base: {args.input_dat}\n- model dir: {args.model_dir}\n"
                       f"- device {args.device}, compute {args.compute_dtype}, delta {args.delta_dtype}"),
        ("資料/Data", data + f"\n- replay: {args.replay}, kl-weight {args.kl_weight}"),
        ("嘗試/Attempts", "\n".join(tries)),
        ("探針/Probes", E.rates_table(result.summary) + "\n\n" + E.row_table(result.rows)
         + "\n\n" + P.format_summary(result.summary.legacy())
         if result is not None else "nothing judged (every attempt stopped on a NaN/Inf loss)"),
        ("產物/Output", f"- {args.output_dat}\n- {os.path.splitext(args.output_dat)[0]}-loss.svg\n"
                        f"- {E.json_path(args.output_dat)}"
         if exported else f"- nothing exported: {status}; base weights untouched\n"
                          f"- {E.json_path(args.output_dat)}"),
        ("結論/Conclusion", f"{status}: {why}. exit {code}, {seconds:.0f}s."),
    ]
    devlog.append_devlog(f"{args.stage} training", sections)
    if exported:
        advice = {"success": "validate: make validate WEIGHT=" + args.output_dat,
                  "not-reached": "target not reached; keep for comparison only"}[status]
        devlog.append_artifact(args.output_dat, f"{args.stage}: {status} "
                               f"({P.format_summary(result.summary.legacy())[:120]})", advice)


def main(argv=None) -> int:
    args = defaults(parse_args(sys.argv[1:] if argv is None else argv))
    try:
        check_paths(args)
        check_splits(args)
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
