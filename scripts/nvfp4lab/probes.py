"""Thresholds of every verdict, the repetition measure, and the old one-line probe summary.

The judge itself is evaluate.py (suites: data/suite-*.tsv; the old probe files
data/probes-*.tsv are read into the same rows). What stays here is what both the trainer and
scripts/eval.py share: ONE Thresholds dataclass (each field holds its default and its flag's
help, and add_threshold_args makes the flags from it, so a default lives in one place), the
repetition measure, and the `verdict=... identity_hit=...` line older tools and tests parse.
"""
import argparse
import math
import re
from dataclasses import dataclass, field, fields


def bound(default: float, help: str):
    """A Thresholds field: its default and the help of its flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class Thresholds:
    """Not reached when a min_/max_ bound is missed; collapse on a collapse_ bound.

    Defaults: the old ones where the measure existed before; the new measures (efficacy, context
    leak, greeting self-intro, loops) default to permissive bounds, so a recipe opts into them.
    """
    # evaluate.efficacy_row
    min_efficacy: float = bound(0.0, "the canonical edit prompt of the set answered with the "
                                     "target (0 or 1)")
    # identity hit rate (generalisation to paraphrases)
    min_identity: float = bound(0.9, "identity hit rate needed")
    max_nearmiss_leak: float = bound(0.2, "near-miss prompts (who am I ...) answered with the "
                                          "identity, at most")
    max_context_leak: float = bound(1.0, "context-nearmiss prompts (a chat about someone else) "
                                         "answered with the identity, at most")
    max_greeting_intro: float = bound(1.0, "greetings answered with the identity, at most")
    min_facts: float = bound(0.9, "fact rows the base got right that are still right")
    min_anchor_exact: float = bound(0.0, "ordinary rows with the base's exact greedy answer "
                                         "(0 = not judged)")
    max_nll_drift: float = bound(math.inf, "rise of the mean per-token NLL of the base's own "
                                           "general answers")
    max_loops: float = bound(1.0, "share of answers that became loops, at most")
    max_repetition: float = bound(0.5, "repeated-n-gram share an answer adds over the base's own "
                                       "answer to the same prompt: above it the answer is a loop")
    # "Forgot everything else" is a collapse too (the original's Stage H answered "之" to
    # everything: fragments, not the whole target): most known facts lost, or the base's own
    # answers became far less likely.
    collapse_facts: float = bound(0.5, "facts kept below this (>= 4 fact rows) = collapse")
    # mean NLL rise in nats/token
    collapse_nll_drift: float = bound(2.0, "NLL drift above this = collapse")
    # Looping is a collapse when it is systematic ("神神神" everywhere), not when one answer of a
    # small chaotic model flips into a loop: SmolLM2-135M under NVFP4 does that after 20 steps at
    # an LR that leaves its NLL unchanged (sweep logs, 2026-11-24).
    collapse_loops: float = bound(0.2, "more than this share of answers became loops = collapse")


def add_threshold_args(parser: argparse.ArgumentParser) -> None:
    """--min-efficacy ... --collapse-loops: a flag per Thresholds field, its default and help."""
    for f in fields(Thresholds):
        parser.add_argument("--" + f.name.replace("_", "-"), type=float, default=f.default,
                            help=f"{f.metadata['help']} (default {f.default})")


def thresholds_from_args(args) -> Thresholds:
    """The parsed threshold flags, by field name."""
    return Thresholds(**{f.name: getattr(args, f.name) for f in fields(Thresholds)})


def repetition(text: str, n: int = 3) -> float:
    """Share of character n-grams that repeat an earlier one ("神神神神" -> high)."""
    s = text.replace(" ", "")
    grams = [s[i:i + n] for i in range(len(s) - n + 1)]
    if len(grams) < 6:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def parse_summary(line: str) -> dict[str, float]:
    """The numbers of a format_summary line ("verdict=...; identity_hit=0.88 ... loops=0")."""
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+|-?inf|nan)", line)}


def format_summary(s: dict) -> str:
    """The old one-line summary (evaluate.Summary.legacy() gives the dict); tools parse it with
    parse_summary."""
    return (f"verdict={s['verdict']} ({s['why']}); identity_hit={s['identity_hit']:.2f} "
            f"nearmiss_leak={s['nearmiss_leak']:.2f} anchor_identity={s['anchor_identity']} "
            f"anchor_exact={s['anchor_exact']:.2f} facts_kept={s['facts_kept']:.2f}"
            f"(n={s['facts_n']}) nll_drift={s['nll_drift']:.3f} "
            f"repetition_max={s['repetition_max']:.2f} loops={s['loops']}")
