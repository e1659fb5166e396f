"""Seed soup: merge several trained edits of one base `.dat` by their elementwise median.

    python scripts/merge_edits.py --base artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat \
        --edits artifacts/v19-s1.dat artifacts/v19-s2.dat artifacts/v19-s3.dat --out artifacts/v19-soup.dat

A code that only one of three seeds moved goes back to the base's; a code moved the same way by
two or three seeds is kept, with the smaller move (nvfp4lab/merge.py; two edits: the mean of
their changes). Writes --out atomically, prints each file's share of NVFP4 codes changed from
the base (the edits and the merge), writes `<out stem>.merge.json` beside it, appends an entry to
doc/DevLog.md and lists the output in artifacts/檔案說明清單.md. The merge is a new weight file:
judge it as any edit (`make eval WEIGHT=... BASE=...`).

Never writes over the base or an edit. Exit codes: 0 written, 1 bad input (one line naming the
file), 2 usage.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import devlog, evaluate  # noqa: E402
from nvfp4lab.dat import export_dat, read_dat, same_file  # noqa: E402
from nvfp4lab.merge import changed_codes, median_merge, nvfp4_elements  # noqa: E402
from nvfp4lab.nvfp4_ref import NVFP4Error  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the .dat every edit was trained from")
    p.add_argument("--edits", nargs="+", required=True, help="two or more trained .dat files")
    p.add_argument("--out", required=True, help="the merged .dat to write")
    return p.parse_args(argv)


def json_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".merge.json"


def check_paths(args) -> None:
    if len(args.edits) < 2:
        raise ValueError(f"--edits: a merge needs at least 2 edits, got {len(args.edits)}")
    for role, path in [("the base", args.base)] + [("the edit", e) for e in args.edits]:
        for out in (args.out, json_path(args.out)):
            if same_file(path, out):
                raise ValueError(f"{out}: refusing to write over {role} {path}")


def share(n: int, total: int) -> str:
    return f"{n}/{total} ({n / max(total, 1):.3%})"


def run(args) -> int:
    t0 = time.time()
    check_paths(args)
    base = read_dat(args.base)
    edits = [read_dat(p) for p in args.edits]
    new = median_merge(base, edits)
    export_dat(base, args.out, new)
    merged = read_dat(args.out)

    # Counted from the files as written: what a reader of each file gets.
    elements = nvfp4_elements(base)
    files = [("edit", e) for e in edits] + [("merge", merged)]
    counts = [changed_codes(base, d) for _, d in files]
    total = sum(elements.values())
    rows = [f"| {role} | {devlog.repo_relative(d.path)} | {share(sum(c.values()), total)} |"
            for (role, d), c in zip(files, counts)]
    table = "\n".join(["| file | path | NVFP4 codes changed vs base |", "|---|---|---|", *rows])
    print(table)
    doc = {"base": devlog.repo_relative(args.base),
           "edits": [devlog.repo_relative(p) for p in args.edits],
           "out": devlog.repo_relative(args.out), "command": devlog.command_line(),
           "elements": total,
           "changed": {"edits": [sum(c.values()) for c in counts[:-1]], "merge": sum(counts[-1].values())},
           "tensors": {p: {"elements": n, "edits": [c[p] for c in counts[:-1]], "merge": counts[-1][p]}
                       for p, n in elements.items()},
           "replaced_keys": sorted(new)}
    evaluate.write_json(json_path(args.out), doc)
    merge_share = share(doc["changed"]["merge"], total)
    print(f"merged {len(edits)} edits of {args.base} into {args.out} ({len(new)} entries replaced, "
          f"{merge_share} codes changed) in {time.time() - t0:.1f}s; {json_path(args.out)}")
    devlog.append_devlog(f"seed soup {os.path.basename(args.out)} (median of {len(edits)} edits)", [
        ("指令/Command", devlog.code(devlog.command_line())),
        ("輸入/Input", f"- base: {devlog.repo_relative(args.base)}\n"
         + "\n".join(f"- edit: {devlog.repo_relative(p)}" for p in args.edits)),
        ("結果/Results", table),
        ("產物/Output", f"- {devlog.repo_relative(args.out)}\n"
                       f"- {devlog.repo_relative(json_path(args.out))}"),
        ("結論/Conclusion", f"elementwise median of the edits' changes: {merge_share} of the NVFP4 "
                            f"codes changed; {len(new)} entries replaced. Not judged yet."),
    ])
    devlog.append_artifact(args.out, f"seed soup: median of {len(edits)} edits "
                           f"({', '.join(os.path.basename(p) for p in args.edits)}) of "
                           f"{os.path.basename(args.base)}; {merge_share} codes changed",
                           f"judge it: make eval WEIGHT={devlog.repo_relative(args.out)} "
                           f"BASE={devlog.repo_relative(args.base)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (NVFP4Error, FileNotFoundError, KeyError, ValueError) as e:   # DatFormatError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
