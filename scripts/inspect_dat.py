"""Summarise a `.dat`: entries, elemTypes and bytes, which tensors are NVFP4, model dims.

    python scripts/inspect_dat.py FILE.dat [--entries]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab.dat import DatFormatError, read_dat, summarize  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dat")
    p.add_argument("--entries", action="store_true", help="also list every entry")
    args = p.parse_args()
    try:
        dat = read_dat(args.dat)
    except (DatFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    s = summarize(dat)
    print(f"{s['path']}: {s['bytes']:,} bytes, {s['entries']} entries")
    for (et, name), (n, b) in sorted(s["elem_types"].items()):
        print(f"  elemType {et:>3} {name:<9} {n:>5} entries {b:>15,} bytes")
    nv = s["nvfp4"]
    print(f"  NVFP4 qdata/scale pairs: {len(nv)}" + (f" (e.g. {nv[0]}, ..., {nv[-1]})" if nv else ""))
    print("  dims: " + ", ".join(f"{k}={v}" for k, v in s["dims"].items()))
    sc = s["scales"]
    if sc["blocks"]:
        print(f"  block scales: {sc['blocks']:,}; at the 2^-6 floor {sc['at_floor'] / sc['blocks']:.1%}, "
              f"below it {sc['below_floor'] / sc['blocks']:.1%}; likely producer: {sc['producer']}")
    if args.entries:
        for e in dat.entries:
            print(f"  [{e.index}] {e.key} elemType={e.elem_type} shape={list(e.shape)} "
                  f"bytes={e.nbytes} offset={e.data_offset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
