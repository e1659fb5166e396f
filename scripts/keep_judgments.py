"""Keep a study's judgments in the repository, without their per-row texts.

    python scripts/keep_judgments.py artifacts/sweep/sweep-*-s13.eval.json --out artifacts/rounds/r28

Why: a device machine's files are gone when the session ends, and a study run one seed a call
can span sessions (round 27's seed-10 and -11 judgments were lost that way). A judgment
(train.py's `<stem>.eval.json`) is ~250 KB, almost all of it the per-row texts (`rows`). Kept:
what `sweep.py --resume` and its pooled rule read (command, verdict, summary, thresholds,
target_tokens), each row's verdict without its texts (`row_verdicts`: which prompts a run
broke, for looking across seeds and variants later), and the answers of the rows it broke only
(`broken_answers`, by suite line: what an identity miss said instead, how a lost fact was
answered); ~23 KB. The kept files go back into a study with
`REUSE=DIR bash scripts/device_method_study.sh study` (copied into artifacts/sweep, then reused
by `--resume` when their command is the run's).

A kept file is never overwritten with a different one (a round's record stays what it was);
the same judgment again is a no-op. Exit 0, or 1 with one line naming the file.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import evaluate  # noqa: E402
from nvfp4lab.atomic import AtomicFile  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402

# Per row, what a later session needs to see which prompts a run broke (the suite's line, the
# row's verdict - hit, LEAK, INTRO, changed (fact lost), ... -, whether it loops and how much
# repetition it added, whether the base knew the fact and the run kept it), by column. The
# texts (prompt, answers, context) are the bulk and stay in the suite and the device's logs,
# but for the answers of the rows the run broke (broken_answers).
ROW_COLUMNS = ("line", "verdict", "loop", "added", "fact_base", "fact_kept")
ANSWER_CHARS = 200   # of a broken row's answer: enough to tell "F#1." from an apology or a loop


def kept(doc: dict) -> dict:
    """The judgment with its per-row texts replaced by `row_verdicts` (ROW_COLUMNS) and the
    answers of the rows it broke (`broken_answers`, {suite line: answer}: evaluate.is_fault, the
    rule train.py's fault log uses)."""
    out = {k: v for k, v in doc.items() if k != "rows"}
    rows = doc.get("rows") or []
    out["row_verdicts"] = {c: [round(r.get(c), 3) if isinstance(r.get(c), float) else r.get(c)
                               for r in rows] for c in ROW_COLUMNS}
    out["broken_answers"] = {str(r["line"]): (r.get("answer") or "")[:ANSWER_CHARS]
                             for r in rows if evaluate.is_fault(r["verdict"])}
    return out


def keep(src: str, out_dir: str) -> str:
    """Write src's judgment, texts dropped (kept()), to out_dir under the same name; the path written."""
    doc = evaluate.read_json(src)
    if "command" not in doc or "summary" not in doc:
        raise DataError(f"{src}: not a train.py judgment (no command or summary)")
    text = json.dumps(kept(doc), ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n"
    dst = os.path.join(out_dir, os.path.basename(src))
    if os.path.exists(dst):
        with open(dst, encoding="utf-8") as f:
            if f.read() == text:
                return dst
        raise DataError(f"{dst}: already kept with other contents; not overwritten")
    os.makedirs(out_dir, exist_ok=True)
    with AtomicFile(dst) as f:
        f.write(text.encode("utf-8"))
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("judgments", nargs="+", help="train.py's <stem>.eval.json files")
    p.add_argument("--out", required=True, help="folder in the repository, e.g. artifacts/rounds/r28")
    args = p.parse_args(argv)
    try:
        for src in args.judgments:
            print(keep(src, args.out))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
