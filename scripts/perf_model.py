"""Bandwidth/compute model: bytes, FLOPs and predicted time of decode, prefill and a training step
on the H200 and the GB10, checked against the H200's measured figures (doc/BENCHMARKS.md).

    python scripts/perf_model.py                   # JSON: bytes, FLOPs, predictions, the H200 check
    python scripts/perf_model.py --table           # the H200 check as a Markdown table
    python scripts/perf_model.py --context 4096 --gb10-bf16-tflops 62.5 --machine gb10
    python scripts/perf_model.py --config /path/to/model_dir   # another shape (no H200 check)
"""
import argparse
import json
import os
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import perf_model as pm  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="config.json or the model dir holding it (default: Qwen3-4B's "
                                    "shape, built in)")
    p.add_argument("--machine", action="append", choices=sorted(pm.MACHINES),
                   help="machine(s) to predict for (repeatable; default h200 and gb10)")
    p.add_argument("--context", type=int, default=pm.BENCH_CACHE_TOKENS,
                   help="KV positions a decode step reads (the static cache's capacity)")
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--rows", type=int, default=16, help="rows per training step")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--head-rows", type=int, help="labelled positions per step (default: half)")
    p.add_argument("--decode-kernels", type=int, default=pm.DECODE_STEP_KERNELS,
                   help="kernels per decode step (bench.py --profile)")
    p.add_argument("--train-kernels", type=int, default=pm.TRAIN_STEP_KERNELS,
                   help="kernels per training step without checkpointing (bench.py --profile)")
    p.add_argument("--gb10-bandwidth-gbs", type=float, help="override the GB10's 273 GB/s")
    p.add_argument("--gb10-bf16-tflops", type=float, help="override the GB10's assumed 125 TFLOP/s")
    p.add_argument("--table", action="store_true", help="print the H200 check as Markdown instead")
    args = p.parse_args(argv)

    try:
        shape = pm.load_shape(args.config) if args.config else pm.QWEN3_4B
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.config}: not a usable config.json ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 1
    machines = dict(pm.MACHINES)
    gb10 = machines["gb10"]
    if args.gb10_bandwidth_gbs:
        gb10 = replace(gb10, bytes_per_s=args.gb10_bandwidth_gbs * 1e9, source=gb10.source
                       + f"; bandwidth set to {args.gb10_bandwidth_gbs} GB/s on the command line")
    if args.gb10_bf16_tflops:
        gb10 = replace(gb10, bf16_flops_per_s=args.gb10_bf16_tflops * 1e12, source=gb10.source
                       + f"; bf16 peak set to {args.gb10_bf16_tflops} TFLOP/s on the command line")
    machines["gb10"] = gb10

    st = pm.Settings(context_tokens=args.context, prefill_tokens=args.prefill_tokens,
                     rows=args.rows, seq_len=args.seq_len, head_rows=args.head_rows,
                     decode_kernels=args.decode_kernels, train_kernels=args.train_kernels,
                     machines=args.machine or ["h200", "gb10"])
    result = pm.report(shape, st, machines=machines)
    if args.table:
        if result["h200_check"] is None:
            print("error: the H200 check is for the Qwen3-4B shape only", file=sys.stderr)
            return 1
        print(pm.check_table([pm.CheckRow(**r) for r in result["h200_check"]]), end="")
        return 0
    json.dump(result, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
