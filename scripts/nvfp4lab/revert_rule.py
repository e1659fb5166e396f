"""Round 34's reading rule, applied to scripts/revert_groups.py's JSONs of one recipe's seeds.

The rule (fixed in data/stages/method-study-en-r34.sweep's header before any of its runs):
- a part "holds the lost facts" if putting it back restores at least half (rounded up) of the
  dev facts the run as it is loses, in at least two seeds, with the identity there at most 5
  rows below the run's (a seed that loses no fact, or collapsed, cannot count);
- a part "holds the identity" if putting it back costs 10 identity rows or more in at least two
  seeds.
A part that holds the lost facts and not the identity is what round 35 moves less: its LR x 0.3
and frozen, against the recipe as it is. If several do, the one that restores the most lost
facts over the seeds, then the one that costs the least identity. Written as code so that round
35's grid follows from round 34's judgments with no choice left to make after reading them.
"""
import math
import re
import shlex

FACT_LOST = "fact lost"        # evaluate.judge_row's mark on a fact row whose keyword is gone
NOT_PARTS = ("nothing", "everything")


def lost_facts(row: dict) -> set[int]:
    """Suite lines that are lost facts in one revert_groups.py row."""
    return {int(line) for line, verdict in row["faults"].items() if FACT_LOST in verdict}


def read_seed(doc: dict) -> dict[str, dict] | None:
    """One seed's revert JSON -> part -> {lost, restored, identity_cost}; None if the run as it
    is collapsed (nothing to read)."""
    rows = {r["put_back"]: r for r in doc["rows"]}
    run = rows["nothing"]
    if run["verdict"] == "collapse":
        return None
    lost = lost_facts(run)
    identity = run["summary"]["identity"]["k"]
    return {label: {"lost": len(lost), "restored": len(lost - lost_facts(r)),
                    "identity_cost": identity - r["summary"]["identity"]["k"]}
            for label, r in rows.items() if label not in NOT_PARTS}


def holds(seeds: list[dict | None], min_seeds: int = 2, identity_slack: int = 5,
          identity_cost: int = 10) -> list[dict]:
    """Per part (in revert_groups.py's order): the seeds where it holds the lost facts and where it
    holds the identity, and the verdicts by the rule."""
    read = [s for s in seeds if s is not None]
    out = []
    for label in (read[0] if read else {}):
        cells = [s[label] for s in read]
        facts = sum(c["lost"] >= 1 and c["restored"] >= math.ceil(c["lost"] / 2)
                    and c["identity_cost"] <= identity_slack for c in cells)
        ident = sum(c["identity_cost"] >= identity_cost for c in cells)
        out.append({"part": label, "cells": cells, "facts_seeds": facts, "identity_seeds": ident,
                    "holds_facts": facts >= min_seeds, "holds_identity": ident >= min_seeds,
                    "restored": sum(c["restored"] for c in cells),
                    "identity_cost": sum(c["identity_cost"] for c in cells)})
    return out


def pick(parts: list[dict]) -> dict | None:
    """The part round 35 moves less, or None (every part that holds the lost facts also holds the
    identity, or none holds them)."""
    ok = [p for p in parts if p["holds_facts"] and not p["holds_identity"]]
    return min(ok, key=lambda p: (-p["restored"], p["identity_cost"]), default=None)


def _last(words: list[str], flag: str) -> str | None:
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]
    return values[-1] if values else None


def knob(part: str, words: list[str], x: float) -> str | None:
    """Flags that train `part` at x times its LR in the recipe whose words (recipe file, then the
    row's flags) are `words`; None where there is no knob for that part alone (the final norm:
    --lr-norm sets every norm)."""
    m = re.fullmatch(r"layers? (\d+)(?:-(\d+))?", part)
    if m:
        first, last = m.group(1), m.group(2) or m.group(1)
        return f"--layer-lr {first}-{last}:{x:g}"
    if part in ("embed", "head"):
        lr = float(_last(words, f"--lr-{part}") or _last(words, "--lr"))
        return f"--lr-{part} {x * lr:.3g}"
    return None


def round_grid(part: str, control_name: str, control_flags: str, recipe_words: list[str],
               multipliers=(0.3, 0.0)) -> list[tuple[str, str]] | None:
    """Round 35's rows: the control as it is, then the control with `part` at each multiplier."""
    words = recipe_words + shlex.split(control_flags)
    rows = [(control_name, control_flags)]
    slug = re.sub(r"[^\w.-]+", "", part.replace(" ", ""))
    for i, x in enumerate(multipliers, 1):
        flags = knob(part, words, x)
        if flags is None:
            return None
        rows.append((f"e{i}-{slug}-x{x:g}", f"{control_flags} {flags}"))
    return rows
