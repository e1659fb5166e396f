"""Convert a dense HF checkpoint (config.json + *.safetensors) or a GGUF file to an NVFP4 `.dat`.

    python scripts/convert.py --hf DIR --out FILE.dat [--qdata-elemtype 0|100] [--device cpu|cuda]
    python scripts/convert.py --gguf FILE.gguf --out FILE.dat --model-dir-out DIR

Streams one tensor at a time; writes atomically; refuses to overwrite an existing file.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab.convert import convert_gguf, convert_hf  # noqa: E402
from nvfp4lab.nvfp4_ref import NVFP4Error  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", help="dir with config.json and *.safetensors")
    src.add_argument("--gguf", help="a GGUF file (needs the optional packages gguf, accelerate)")
    p.add_argument("--model-dir-out", help="with --gguf: where config.json + tokenizer go")
    p.add_argument("--out", required=True)
    p.add_argument("--qdata-elemtype", type=int, choices=[0, 100], default=0)
    p.add_argument("--device", default="cpu", help="where quantization runs")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    args = p.parse_args()
    if os.path.exists(args.out) and not args.force:
        print(f"error: {args.out}: exists (pass --force to replace it)", file=sys.stderr)
        return 1
    if args.gguf and not args.model_dir_out:
        p.error("--gguf needs --model-dir-out")
    t0 = time.time()
    try:
        if args.gguf:
            plan = convert_gguf(args.gguf, args.out, args.model_dir_out, args.qdata_elemtype)
        else:
            plan = convert_hf(args.hf, args.out, args.qdata_elemtype, args.device)
    except ImportError as e:
        print(f"error: {e} (GGUF needs: pip install gguf accelerate)", file=sys.stderr)
        return 1
    except (FileNotFoundError, KeyError, ValueError, NVFP4Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    nv = sum(1 for _, q in plan if q)
    print(f"{args.out}: {nv} NVFP4 weights, {len(plan) - nv} dense, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MiB in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
