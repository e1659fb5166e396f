"""Which suite rows a study's runs broke, counted over kept judgments (scripts/keep_judgments.py).

    python scripts/rows_broken.py artifacts/rounds/r27/*.eval.json artifacts/rounds/r28/*.eval.json

Per row of the suite the judgments were made on: in how many runs a fact the base knew was lost,
an answer became a loop the base's answer was not, the identity leaked into a near miss or
context, or a greeting got the self-introduction. Rows that break in most runs whatever the
variant and seed are where a bar is lost, not a knob's doing (doc/METHOD.md "Round 28").
Prints a Markdown table (most broken first); `--json` prints the counts instead.

    python scripts/rows_broken.py --noise-floor artifacts/noise-floor.json

does the same for scripts/noise_floor.py's random edits, per share of codes moved (its JSON keeps
the prompts that looped and the facts lost): are the rows a trained edit breaks the ones any edit
of that size breaks?
A collapsed run is judged on the monitor split at the step it collapsed, not on the suite the
others share: it is left out of the counts and named in the table's first line.
Exit 0, or 1 with one line naming the file.
"""
import argparse
import json
import os
import sys
from collections import Counter
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import evaluate  # noqa: E402
from nvfp4lab.suite import read_suite  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402

BREAKS = ("missed", "fact lost", "loop added", "leak", "intro")


def breaks(verdict: str, loop: bool, fact_base, fact_kept) -> list[str]:
    """The BREAKS of one row of one run: its kept flags, and for those that have no flag of
    their own, its verdict's mark (evaluate.judge_row: miss for an identity row, LEAK, INTRO)."""
    return [name for name, on in (("missed", verdict.split(" ")[0] == "miss"),
                                  ("fact lost", bool(fact_base) and not fact_kept),
                                  ("loop added", loop), ("leak", "LEAK" in verdict),
                                  ("intro", "INTRO" in verdict)) if on]


class Counts(NamedTuple):
    suite: str                      # the suite the counted judgments share
    per_line: dict[int, Counter]    # suite line -> Counter of BREAKS names over the runs
    answers: dict[int, Counter]     # suite line -> Counter of the answers kept there
    with_answers: int               # how many counted judgments kept their answers
    runs: list[str]                 # the judgments counted
    collapsed: list[str]            # the collapsed runs left out


def count(paths: list[str]) -> Counts:
    """Per suite line, the BREAKS over the runs and the answers the runs gave there (from the
    judgments that kept them: `broken_answers`, kept since the seventeenth session); collapsed
    runs (judged on the monitor split where they collapsed) are left out and listed."""
    suite, per_line, answers, with_answers, runs, collapsed = None, {}, {}, 0, [], []
    for p in paths:
        doc = evaluate.read_json(p)
        if doc.get("verdict") == "collapse":
            collapsed.append(p)
            continue
        v = doc.get("row_verdicts")
        if not v:
            raise DataError(f"{p}: no row_verdicts (keep it with scripts/keep_judgments.py)")
        if suite not in (None, doc.get("suite")):
            raise DataError(f"{p}: judged on {doc.get('suite')}, the others on {suite}")
        suite = doc.get("suite")
        runs.append(p)
        for line, *row in zip(v["line"], v["verdict"], v["loop"], v["fact_base"], v["fact_kept"]):
            per_line.setdefault(line, Counter()).update(breaks(*row))
        with_answers += "broken_answers" in doc
        for line, answer in (doc.get("broken_answers") or {}).items():
            answers.setdefault(int(line), Counter())[answer] += 1
    if not runs:
        raise DataError(f"{paths[0]}: no judgment to count (all {len(collapsed)} collapsed)")
    return Counts(suite, per_line, answers, with_answers, runs, collapsed)


def count_noise_floor(paths: list[str]) -> tuple[str, dict[float, tuple[int, dict[str, Counter]]]]:
    """(the suite, {share: (runs, {prompt: Counter of "fact lost" / "loop added"})}) over
    noise_floor.py JSONs judged on one suite."""
    suite, runs, shares = None, Counter(), {}
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                doc = json.load(f)
            if suite not in (None, doc["suite"]):
                raise DataError(f"{p}: judged on {doc['suite']}, the others on {suite}")
            suite = doc["suite"]
            for r in doc["runs"]:
                runs[r["share"]] += 1
                per = shares.setdefault(r["share"], {})
                for prompt in r["facts_lost"]:
                    per.setdefault(prompt, Counter())["fact lost"] += 1
                for prompt in r["looped"]:
                    per.setdefault(prompt, Counter())["loop added"] += 1
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{p}: not a noise_floor.py JSON ({e.__class__.__name__}: {e})") from None
    return suite, {share: (runs[share], per) for share, per in shares.items()}


def print_noise_floor(paths: list[str], as_json: bool) -> None:
    suite, shares = count_noise_floor(paths)
    if as_json:
        print(json.dumps({"suite": suite, "shares": [
            {"share": sh, "runs": n, "rows": [{"prompt": q, **c} for q, c in per.items()]}
            for sh, (n, per) in sorted(shares.items())]}, ensure_ascii=False, indent=1))
        return
    print(f"random edits on {suite}; rows broken in at least one run:\n")
    print("| share of codes moved | runs | prompt | fact lost | loop added |")
    print("|---|---|---|---|---|")
    for sh, (n, per) in sorted(shares.items()):
        for q in sorted(per, key=lambda q: (-per[q]["fact lost"], -per[q]["loop added"], q)):
            print(f"| {sh:g} | {n} | {q} | {per[q]['fact lost']} | {per[q]['loop added']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("judgments", nargs="+", help="kept judgments (artifacts/rounds/*/*.eval.json), "
                                                "or with --noise-floor noise_floor.py JSONs")
    p.add_argument("--json", action="store_true", help="the counts as JSON")
    p.add_argument("--answers", type=int, default=0, metavar="N",
                   help="after the table, each broken row's N most frequent kept answers")
    p.add_argument("--noise-floor", action="store_true",
                   help="the files are scripts/noise_floor.py JSONs (artifacts/noise-floor*.json)")
    args = p.parse_args(argv)
    if args.noise_floor:
        try:
            print_noise_floor(args.judgments, args.json)
        except (DataError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        c = count(args.judgments)
        suite, per_line = c.suite, c.per_line
        prompts = {r.line: (r.kind, r.prompt) for r in read_suite(suite)}
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    broken = sorted((line for line, c in per_line.items() if c),
                    key=lambda line: (-sum(per_line[line].values()), line))
    if args.json:
        print(json.dumps({"suite": suite, "runs": len(c.runs), "collapsed": c.collapsed,
                          "rows": [{"line": line, "kind": prompts[line][0], "prompt": prompts[line][1],
                                    **per_line[line]} for line in broken]}, ensure_ascii=False, indent=1))
        return 0
    left_out = (f" ({len(c.collapsed)} collapsed left out: {', '.join(map(os.path.basename, c.collapsed))})"
                if c.collapsed else "")
    print(f"{len(c.runs)} runs on {suite}{left_out}; rows broken in at least one:\n")
    print("| line | kind | prompt | " + " | ".join(BREAKS) + " |")
    print("|---|---|---|" + "---|" * len(BREAKS))
    for line in broken:
        kind, prompt = prompts[line]
        print(f"| {line} | {kind} | {prompt} | " + " | ".join(str(per_line[line][b]) for b in BREAKS) + " |")
    if args.answers:
        print(f"\nAnswers of the broken rows ({c.with_answers} of the {len(c.runs)} judgments "
              "kept them):\n")
        for line in broken:
            for answer, n in c.answers.get(line, Counter()).most_common(args.answers):
                print(f"- {line} ({n}x): {answer!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
