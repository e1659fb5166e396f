"""Pool kept judgments into groups and rank the groups by the study's rule, per run.

    python scripts/pool_judgments.py single='artifacts/rounds/r33/sweep-s0-*.eval.json' \
        soup='artifacts/rounds/r33/soup-*.eval.json'

Each argument is NAME=GLOB (quote the glob); a group is every judgment its glob matches
(train.py's or eval.py's `.eval.json`, e.g. a study's single runs against the median merges of
their seeds, scripts/merge_edits.py). The table is sweep.py's pooled one. The rule is sweep.py's
`--rule misses` taken per run, because groups may differ in size (nine single runs against three
merges): the larger share of runs reached, then the fewer acceptance criteria missed per run
(a collapse counts as missing all), then the mean dev score, facts kept, lower NLL drift. With
groups of one size it orders them as `sweep.py --rule misses` does. A tie keeps the group named
first (name the control first). `--json` prints the pooled rows instead.

Exit 0, or 1 with one line naming the glob or file.
"""
import argparse
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sweep  # noqa: E402
from nvfp4lab import evaluate  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402


def parse_group(arg: str) -> tuple[str, list[str]]:
    """NAME=GLOB -> (NAME, the sorted files it matches); none matched is an error."""
    name, sep, pattern = arg.partition("=")
    if not sep or not name or not pattern:
        raise ValueError(f"{arg!r}: give NAME=GLOB")
    files = sorted(glob.glob(pattern))
    if not files:
        raise ValueError(f"{name}={pattern}: no judgment matches")
    return name, files


def runs_of(name: str, files: list[str]) -> list[dict]:
    """sweep.py's result dicts for one group's judgments."""
    out = []
    for path in files:
        doc = evaluate.read_json(path)
        out.append({**sweep.result_from(os.path.basename(path), "", doc,
                                        float(doc.get("total_seconds") or 0.0), ""),
                    "variant": name, "base_flags": ""})
    return out


def per_run_key(row: dict):
    """sweep.pooled_key(rule="misses") with the counts divided by the group's runs."""
    if row["misses"] is None:
        raise ValueError(f"{row['name']}: a judgment without every measure or its thresholds")
    n = len(row["runs"])
    return (row["successes"] / n, -row["misses"] / n, row["score"], row["facts"], -row["drift"])


def choose(rows: list[dict]) -> dict:
    """The best group by per_run_key; max keeps the first of equals, so a tie keeps the first."""
    return max(rows, key=per_run_key)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("groups", nargs="+", help="NAME=GLOB of .eval.json files (the control first)")
    p.add_argument("--json", action="store_true", help="print the pooled rows as JSON")
    args = p.parse_args(argv)
    try:
        results = [r for g in args.groups for r in runs_of(*parse_group(g))]
        rows = sweep.pooled(results)
        best = choose(rows)
    except (ValueError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        keep = ("name", "successes", "misses", "score", "facts", "drift", "rates")
        print(json.dumps([{**{k: r[k] for k in keep}, "runs": [x["name"] for x in r["runs"]]}
                          for r in rows], indent=1))
        return 0
    print(sweep.pooled_table(rows))
    for r in rows:
        n = len(r["runs"])
        print(f"{r['name']}: {n} runs, {r['successes']} reached, {r['misses']} criteria missed "
              f"({r['misses'] / n:.2f} a run), mean score {r['score']:+.3f}")
    print(f"chosen: {best['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
