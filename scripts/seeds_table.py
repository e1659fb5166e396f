"""One table of several judged runs (`make demo-real SEEDS="1 2 3"`): one row per evaluation JSON
with its verdict and rates (95% intervals), read from the files train.py / eval.py wrote.

    python scripts/seeds_table.py artifacts/demo-real-s1.eval.json artifacts/demo-real-s2.eval.json

Prints the table and appends it to doc/DevLog.md. Exit 0 if every run succeeded, 3 if any did
not, 1 when a JSON is missing or unreadable (one line naming it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import devlog, evaluate  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402


def main(argv=None) -> int:
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: seeds_table.py RUN.eval.json ...", file=sys.stderr)
        return 2
    try:
        docs = [evaluate.read_json(p) for p in paths]
        text = evaluate.runs_table(list(zip(paths, docs)))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ok = sum(d["verdict"] == "success" for d in docs)
    verdict = f"{ok} of {len(docs)} runs reached the target"
    print(text)
    print(verdict)
    suites = sorted({str(d.get("suite")) for d in docs})
    devlog.append_devlog(f"runs table ({len(docs)} runs)", [
        ("指令/Command", devlog.code(devlog.command_line())),
        ("結果/Results", text + f"\n\njudged on: {', '.join(suites)}"),
        ("結論/Conclusion", verdict),
    ])
    return 0 if ok == len(docs) else 3


if __name__ == "__main__":
    sys.exit(main())
