"""How well the monitor split, judged at the end of a run, foretells that run's dev judgment.

    python scripts/monitor_vs_dev.py 'artifacts/rounds/r2[7-9]/*.eval.json' 'artifacts/rounds/r3[0-7]/*.eval.json'

Every study run keeps two judgments of the same trained weights: its last attempt's `monitor`
(the monitor split, 121 rows, which training may watch) and its `summary` (the dev suite, which
chooses recipes). If the monitor foretold dev, a run could be judged, stopped or picked among
attempts on the monitor alone. Per measure this prints the Pearson r over the runs judged on
both (collapsed runs left out: their dev judgment is the monitor's at the collapse, so they
would agree by construction) with each side's rows a run, and then the one use that matters:
per group of runs (the same folder and variant, seeds differing) the dev criteria missed by the
run the monitor would pick (fewest monitor criteria missed, then the higher monitor identity),
against the group's mean and its best. A collapse counts as sweep.FAILED_MISSES on either side.
Last, whether dev's facts are lost run by run or item by item: over the runs that kept their row
verdicts and share one suite, the facts every run's base knew are split in halves at random (200
splits, seeded) and the facts lost in one half are correlated with those lost in the other. An r
near 0 says no run-level damage exists for any larger fact judge to catch: which facts go is a
property of the facts. Arguments are judgments or quoted globs; held-out judgments
(artifacts/rounds/*-heldout) are
refused: they hold no monitor of their own that training could see, and reading them here would
use held-out to steer. `--json` prints the numbers instead. Exit 0, or 1 with one line.
"""
import argparse
import glob
import json
import math
import os
import random
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sweep  # noqa: E402
from nvfp4lab import evaluate  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402

MEASURES = ("identity", "nearmiss_leak", "context_leak", "greeting_intro", "facts_kept", "loops")


def misses(summary: dict, thresholds: dict) -> int | None:
    """sweep.criteria_missed of a summary (the monitor's or dev's), a collapse counting as
    sweep.FAILED_MISSES as there; None for a judgment too old to hold every measure."""
    if summary["verdict"] == "collapse":
        return sweep.FAILED_MISSES
    return sweep.criteria_missed({"summary": summary, "thresholds": thresholds})


def pair(path: str, doc: dict) -> dict | None:
    """(monitor, dev) of one kept judgment; None when the run kept no end-of-run monitor or is
    too old to be counted."""
    attempts = doc.get("attempts") or []
    monitor = attempts[-1].get("monitor") if attempts else None
    if not monitor or "identity" not in monitor:
        return None
    monitor_misses = misses(monitor, doc.get("thresholds"))
    dev_misses = misses(doc["summary"], doc.get("thresholds"))
    if monitor_misses is None or dev_misses is None:
        return None
    stem = os.path.basename(path).removesuffix(".eval.json")
    variant, _, seed = stem.rpartition("-s")
    return {"path": path, "group": (os.path.dirname(path), variant or stem), "seed": seed,
            "monitor": monitor, "dev": doc["summary"],
            "monitor_misses": monitor_misses, "dev_misses": dev_misses}


def pearson(x: list[float], y: list[float]) -> float:
    """r, NaN when either side does not vary (a measure no run moved tells nothing)."""
    if len(x) < 3 or statistics.pstdev(x) == 0 or statistics.pstdev(y) == 0:
        return math.nan
    return statistics.correlation(x, y)


def mean_n(rates: list[dict]) -> float:
    """Mean rows a run judged a measure on (0 without runs)."""
    return statistics.mean(r["n"] for r in rates) if rates else 0


def agreement(pairs: list[dict]) -> list[dict]:
    """Per measure: r between the monitor's and dev's rate over the runs judged on both, n runs,
    and the mean rows a run each side judged it on."""
    judged = [p for p in pairs if p["dev"]["verdict"] != "collapse"]
    out = []
    for m in MEASURES:
        both = [p for p in judged if p["monitor"][m]["n"] and p["dev"][m]["n"]]
        x = [p["monitor"][m]["value"] for p in both]
        y = [p["dev"][m]["value"] for p in both]
        out.append({"measure": m, "runs": len(both), "r": pearson(x, y),
                    "still": [side for side, v in (("monitor", x), ("dev", y))
                              if len(set(v)) <= 1],   # a side that never moved: r says nothing
                    "monitor_rows": mean_n([p["monitor"][m] for p in both]),
                    "dev_rows": mean_n([p["dev"][m] for p in both])})
    return out


def picks(pairs: list[dict]) -> dict:
    """Over the groups of 2+ runs: mean dev criteria missed of the monitor's pick, of a run taken
    at random (the group's mean) and of the best run (what a perfect judge would pick)."""
    groups = defaultdict(list)
    for p in pairs:
        groups[p["group"]].append(p)
    rows = [g for g in groups.values() if len(g) >= 2]
    if not rows:
        raise ValueError("no group of two or more seeds of one variant")
    pick = [min(g, key=lambda p: (p["monitor_misses"], -p["monitor"]["identity"]["value"]))
            for g in rows]
    return {"groups": len(rows), "runs": sum(len(g) for g in rows),
            "picked": statistics.mean(p["dev_misses"] for p in pick),
            "random": statistics.mean(statistics.mean(p["dev_misses"] for p in g) for g in rows),
            "best": statistics.mean(min(p["dev_misses"] for p in g) for g in rows),
            "picked_reached": sum(p["dev_misses"] == 0 for p in pick),
            "groups_with_a_reached_run": sum(any(p["dev_misses"] == 0 for p in g) for g in rows)}


def fact_split_half(docs: list[dict], splits: int = 200, seed: int = 0) -> dict | None:
    """Mean r between the facts lost in two random halves of the base-known facts, over the
    judged runs of the commonest suite (None: fewer than 3 such runs or 2 such facts)."""
    runs = defaultdict(list)
    for doc in docs:
        rv = doc.get("row_verdicts")
        if doc["verdict"] == "collapse" or not rv:
            continue
        known = {line for line, b in zip(rv["line"], rv["fact_base"]) if b}
        lost = {line for line, b, k in zip(rv["line"], rv["fact_base"], rv["fact_kept"])
                if b and not k}
        runs[doc.get("suite")].append((known, lost))
    if not runs:
        return None
    suite, judged = max(runs.items(), key=lambda kv: len(kv[1]))
    known = sorted(set.intersection(*(k for k, _ in judged)))
    if len(judged) < 3 or len(known) < 2:
        return None
    rng, rs = random.Random(seed), []
    for _ in range(splits):
        rng.shuffle(known)
        half = set(known[:len(known) // 2])
        r = pearson([len(lost & half) for _, lost in judged],
                    [len(lost - half) for _, lost in judged])
        if not math.isnan(r):
            rs.append(r)
    per_fact = {line: sum(line in lost for _, lost in judged) for line in sorted(known)}
    return {"suite": suite, "runs": len(judged), "facts": len(known),
            "r": statistics.mean(rs) if rs else None, "lost_per_fact": per_fact}


def expand(args: list[str]) -> list[str]:
    files = []
    for a in args:
        found = sorted(glob.glob(a)) or ([a] if os.path.exists(a) else [])
        if not found:
            raise ValueError(f"{a}: no judgment matches")
        files += found
    held = [f for f in files if "heldout" in f]
    if held:
        raise ValueError(f"{held[0]}: a held-out judgment; compare the monitor with dev only")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("judgments", nargs="+", help="kept dev judgments (.eval.json) or quoted globs")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    args = p.parse_args(argv)
    try:
        docs = {path: evaluate.read_json(path) for path in expand(args.judgments)}
        pairs = [x for x in (pair(p, d) for p, d in docs.items()) if x is not None]
        if not pairs:
            raise ValueError("no judgment kept an end-of-run monitor")
        rows, pick, halves = agreement(pairs), picks(pairs), fact_split_half(list(docs.values()))
    except (ValueError, DataError, OSError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        # JSON has no NaN
        rows = [{**r, "r": None if math.isnan(r["r"]) else r["r"]} for r in rows]
        print(json.dumps({"runs": len(pairs), "measures": rows, "picks": pick,
                          "fact_halves": halves}, indent=1))
        return 0
    print(f"{len(pairs)} runs judged on the monitor (end of run) and on dev; collapsed runs left "
          "out of r\n\n| measure | runs | Pearson r | monitor rows a run | dev rows a run |\n"
          "|---|---|---|---|---|")
    for r in rows:
        r_text = (f"{r['r']:+.2f}" if not math.isnan(r["r"]) else
                  "n/a (" + " and ".join(r["still"]) + " never moved)" if r["still"] else "n/a")
        print(f"| {r['measure']} | {r['runs']} | {r_text} | {r['monitor_rows']:.0f} | "
              f"{r['dev_rows']:.0f} |")
    print(f"\nPicking one run of each group ({pick['groups']} groups, {pick['runs']} runs) by the "
          f"monitor: dev criteria missed {pick['picked']:.2f} a group, against "
          f"{pick['random']:.2f} "
          f"for a run taken at random and {pick['best']:.2f} for the best run; the pick reached "
          f"on dev in {pick['picked_reached']} groups, {pick['groups_with_a_reached_run']} groups "
          "had a run that did")
    if halves:
        lost = ", ".join(f"line {line} {n}" for line, n in sorted(
            halves["lost_per_fact"].items(), key=lambda kv: -kv[1]) if n)
        print(f"\nFacts on {halves['suite']}: {halves['runs']} judged runs, {halves['facts']} "
              "facts "
              f"every run's base knew; facts lost in one random half against the other: "
              + (f"r {halves['r']:+.2f}" if halves["r"] is not None else "r n/a")
              + f" (mean of 200 splits); runs that lost each: {lost or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
