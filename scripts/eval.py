"""Judge any NVFP4 `.dat` on a suite without training (`make eval`).

    python scripts/eval.py --weight artifacts/demo-real.dat --base artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat \
        --suite data/suite-en-heldout-v1.tsv --model-dir artifacts/smollm2

Prints the per-row table and the rates (k/n, Wilson 95% interval), writes the JSON (--out,
default `<weight stem>.eval.json`) and appends the table to doc/DevLog.md. Without --base the
base-relative columns (facts kept, exact kept, NLL drift, KL) are n/a.

Exit codes: 0 success, 3 not reached, 4 collapse, 1 bad input (one line naming file:line), 2 usage.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import chat, cli, config, devlog, evaluate, paths, probes  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.model import DTYPES, load_model  # noqa: E402

EXIT = {"success": 0, "not-reached": 3, "collapse": 4}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--weight", required=True, help=".dat to judge (relative: from here, then in --model-dir)")
    a("--base", help="the base .dat it was trained from: facts kept, exact kept, NLL drift, KL")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", help="suite file (data/suite-*.tsv)")
    src.add_argument("--probes", help="old probe file (data/probes-*.tsv)")
    a("--model-dir", help="config.json (+ tokenizer); default: the user's dir, else the proxy")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--compute-dtype", choices=list(DTYPES), help="default bfloat16 (float32 on CPU)")
    targets = evaluate.TARGETS
    a("--target", help="what identity answers must contain (default: by the suite's language, "
                       f"'-en-' in its name: {targets['en']!r}, else {targets['zh']!r})")
    a("--max-tokens", type=int, default=32, help="answer length (train.py: --probe-max-tokens)")
    a("--eval-batch", type=int, help="chats per generate batch (default 64 on CUDA, 16 on CPU)")
    a("--out", help="JSON to write (default: <weight stem>.eval.json)")
    a("--thresholds-of", metavar="RECIPE",
      help="judge by the thresholds train.py --recipe RECIPE judges with (a data/stages/*.args "
           "file); a threshold flag given here still wins")
    probes.add_threshold_args(p)
    config.recipe_threshold_defaults(p, argv)
    args = p.parse_args(argv)
    args.model_dir = args.model_dir or paths.default_model_dir()
    args.weight = paths.resolve_weight(args.weight, args.model_dir)
    args.compute_dtype = args.compute_dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.target = args.target or evaluate.suite_target(args.suite or args.probes)
    args.out = args.out or evaluate.json_path(args.weight)
    return args


def run(args) -> int:
    t0 = time.time()
    for path in (args.weight, args.base):
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
    th = probes.thresholds_from_args(args)
    es = evaluate.load_set("suite" if args.suite else "probes", args.suite or args.probes,
                           args.target, th, args.max_tokens, args.eval_batch,
                           legacy=args.probes is not None)
    device, dtype = torch.device(args.device), DTYPES[args.compute_dtype]
    model = load_model(read_dat(args.weight), args.model_dir, device, dtype)
    base = load_model(read_dat(args.base), args.model_dir, device, dtype) if args.base else None
    tok = chat.load_tokenizer(args.model_dir)
    t_load = time.time() - t0
    if base is not None:
        evaluate.with_base_answers(es, tok, model, base)
    result = evaluate.run(model, tok, es, base=base, profile=True)
    s = result.summary
    print(evaluate.row_table(result.rows))
    print(probes.format_summary(s.legacy()))
    rates = evaluate.rates_table(s) + ("\n\n" + evaluate.target_line(result.target_tokens)
                                       if result.target_tokens else "")
    print(rates)
    seconds = time.time() - t0
    evaluate.write_json(args.out, evaluate.report(result, es, weight=args.weight, base=args.base,
                                                  model_dir=args.model_dir, device=args.device,
                                                  command=devlog.command_line(),
                                                  load_seconds=t_load, total_seconds=seconds))
    code = EXIT[s.verdict]
    print(f"eval {args.weight} on {es.path}: {s.verdict} ({s.why}); judged in "
          f"{result.seconds:.1f}s, {seconds:.1f}s total; exit {code}; judgment {args.out}")
    devlog.append_devlog(f"eval {os.path.basename(args.weight)}", [
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- weight: {args.weight}\n- base: {args.base or '- (base columns n/a)'}\n"
                       f"- {es.split}: {es.path} ({len(es.rows)} rows), target {es.target!r}\n"
                       f"- model dir {args.model_dir}, device {args.device}, {args.compute_dtype}"),
        ("結果/Results", rates),
        ("結論/Conclusion", f"{s.verdict}: {s.why}. exit {code}; {result.seconds:.1f}s to judge "
                            f"{len(es.rows)} rows; JSON {args.out}"),
    ])
    return code


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run_or_error(run, args, f"judging {args.weight}")


if __name__ == "__main__":
    sys.exit(main())
