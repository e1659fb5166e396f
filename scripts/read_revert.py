"""Read round 34's revert_groups.py judgments by the rule fixed before its runs; write round 35's grid.

    python scripts/read_revert.py artifacts/rounds/r34/sweep-d0-v19-s*.revert.json \
        --control data/stages/method-study-en-r34.sweep:d0-v19 --grid-out artifacts/r35.sweep

Per part put back (embed, final norm, head, each band of layers) and per seed: the dev facts the
run loses that the put-back restores, and the identity rows it costs; then which part holds the
lost facts and which holds the identity (nvfp4lab/revert_rule.py has the rule). If one part holds
the lost facts and not the identity, --grid-out gets round 35's grid: the control row as it is,
then that part at x 0.3 and frozen (sweep.py NAME<TAB>FLAGS rows). Otherwise no grid is written
and the verdict says so. Reads only; writes --grid-out and --out.

Exit codes: 0 read (a grid or not), 1 bad input (one line naming the file), 2 usage.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import cli, config, devlog, evaluate, revert_rule  # noqa: E402
from nvfp4lab.atomic import AtomicFile  # noqa: E402

import sweep  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("judgments", nargs="+", help="revert_groups.py JSONs, one a seed")
    p.add_argument("--control", required=True, metavar="GRID:ROW",
                   help="the recipe row the runs trained (sweep.py grid file and row name)")
    p.add_argument("--control-name", default="e0-v19", help="the control's name in the new grid")
    p.add_argument("--recipe", default="data/stages/method-study-en.args",
                   help="the recipe the grid's rows add to (sweep.py --recipe)")
    p.add_argument("--grid-out", help="round 35's grid (written only if a part is picked)")
    p.add_argument("--out", help="the reading as JSON")
    return p.parse_args(argv)


def read_judgment(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not rows or any("faults" not in r or "put_back" not in r for r in rows) \
            or "nothing" not in [r["put_back"] for r in rows]:
        raise ValueError(f"{path}: not a revert_groups.py judgment with each row's faults "
                         "(written before they were kept?)")
    return doc


def table(parts: list[dict], names: list[str]) -> str:
    out = ["| put back | " + " | ".join(f"{n}: restored/lost, identity cost" for n in names)
           + " | seeds: facts / identity | holds the lost facts | holds the identity |",
           "|---|" + "---|" * len(names) + "---|---|---|"]
    for p in parts:
        cells = [f"{c['restored']}/{c['lost']}, {c['identity_cost']:+d}" for c in p["cells"]]
        out.append(f"| {p['part']} | " + " | ".join(cells) + f" | {p['facts_seeds']} / "
                   f"{p['identity_seeds']} | {'yes' if p['holds_facts'] else 'no'} | "
                   f"{'yes' if p['holds_identity'] else 'no'} |")
    return "\n".join(out)


def run(args) -> int:
    grid_path, _, row = args.control.rpartition(":")
    flags = dict(sweep.read_variants(grid_path)).get(row)
    if flags is None:
        raise ValueError(f"{grid_path}: no row {row!r}")
    docs = [read_judgment(j) for j in args.judgments]
    seeds = [revert_rule.read_seed(d) for d in docs]
    names = [os.path.basename(j).split(".")[0] for j, s in zip(args.judgments, seeds) if s]
    parts = revert_rule.holds(seeds)
    chosen = revert_rule.pick(parts)
    recipe = config.recipe_flags(argparse.ArgumentParser(), args.recipe)
    grid = (revert_rule.round_grid(chosen["part"], args.control_name, flags, recipe)
            if chosen else None)
    text = table(parts, names)
    collapsed = [j for j, s in zip(args.judgments, seeds) if s is None]
    if grid:
        verdict = (f"{chosen['part']} holds the lost facts and not the identity: round 35 trains "
                   f"it at x 0.3 and frozen against {row}")
    elif chosen:
        verdict = f"{chosen['part']} holds the lost facts, but no flag trains it alone: no grid"
    else:
        verdict = ("no part holds the lost facts without the identity: the next round is "
                   "elsewhere, no grid")
    print(text)
    if collapsed:
        print(f"collapsed (not read): {', '.join(collapsed)}")
    print(verdict)
    if grid and args.grid_out:
        body = "".join(f"{n}\t{f}\n" for n, f in grid)
        head = (f"# Round 35, written by scripts/read_revert.py from round 34's judgments by the "
                f"rule in its header\n# (nvfp4lab/revert_rule.py): {verdict}.\n"
                f"# {devlog.command_line()}\n")
        with AtomicFile(args.grid_out) as f:
            f.write((head + body).encode("utf-8"))
        print(f"grid: {args.grid_out} ({len(grid)} rows)")
    if args.out:
        evaluate.write_json(args.out, {"judgments": args.judgments, "collapsed": collapsed,
                                       "parts": parts, "verdict": verdict,
                                       "picked": chosen and chosen["part"], "grid": grid})
    return 0


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return cli.run_or_error(run, args, "reading the judgments")


if __name__ == "__main__":
    sys.exit(main())
