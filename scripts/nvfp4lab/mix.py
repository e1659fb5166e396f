"""Training data mix: which rows each step trains on.

`--mix data/a.tsv:1,data/b.tsv:1:anchor` -> every step takes `step-chunk-rows` rows split across
the files in those ratios (largest remainder, so 1:1 of 16 is exactly 8 + 8). Role `anchor` marks
ordinary rows whose targets may be replaced by the base model's own answers (`--replay self`) and
which get the KL term; the default role `target` trains on the TSV's own answers. Role
`neighbour` marks near-miss prompts (我是誰, Who is he?, greetings): kept like anchors, and with
--unlikelihood-weight the identity answer itself is also pushed down on them.
"""
import random
from dataclasses import dataclass, field

from .tsv import DataError, read_tsv

ROLES = ("target", "anchor", "neighbour")
KEEP_ROLES = ("anchor", "neighbour")   # rows whose answers are kept (replay targets, KL to the base)
SELF_ROLE = "self-answer"   # the trained model's own greedy answer (--self-kl-rows): KL only, no CE


@dataclass
class Source:
    path: str
    weight: float
    role: str
    rows: list = field(default_factory=list)   # tsv.Row
    cursor: int = 0                             # for --sample-mode sequential


def parse_mix(spec: str) -> list[tuple[str, float, str]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise DataError(f"--mix item {item!r}: expected FILE:WEIGHT or FILE:WEIGHT:ROLE")
        path, w, role = parts[0], parts[1], parts[2] if len(parts) == 3 else "target"
        try:
            weight = float(w)
        except ValueError:
            raise DataError(f"--mix item {item!r}: weight {w!r} is not a number") from None
        if weight <= 0 or role not in ROLES:
            raise DataError(f"--mix item {item!r}: weight must be > 0 and role one of {ROLES}")
        out.append((path, weight, role))
    if not out:
        raise DataError("--mix is empty")
    return out


def load_sources(spec: list[tuple[str, float, str]]) -> list[Source]:
    sources = []
    for path, weight, role in spec:
        rows = read_tsv(path)
        if not rows:
            raise DataError(f"{path}: no training rows")
        sources.append(Source(path, weight, role, rows))
    return sources


def keep_prompts(sources: list[Source]) -> set[str]:
    """The prompts of the rows whose answers are kept (anchor / neighbour sources): what the
    replay answers and --replay-stock-kl groups."""
    return {r.prompt for s in sources if s.role in KEEP_ROLES for r in s.rows}


def split_counts(weights: list[float], n: int) -> list[int]:
    """n rows in proportion to weights, largest remainder first (deterministic)."""
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def step_rows(sources: list[Source], n_rows: int, rng: random.Random, mode: str) -> list[tuple]:
    """(prompt, target, role) rows for one step."""
    out = []
    for src, k in zip(sources, split_counts([s.weight for s in sources], n_rows)):
        if mode == "sequential":
            picked = [src.rows[(src.cursor + i) % len(src.rows)] for i in range(k)]
            src.cursor = (src.cursor + k) % len(src.rows)
        elif k <= len(src.rows):
            picked = rng.sample(src.rows, k)
        else:
            picked = [rng.choice(src.rows) for _ in range(k)]
        out += [(r.prompt, r.target, src.role) for r in picked]
    return out
