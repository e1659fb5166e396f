"""--replay-drop-wrong: anchor rows whose replayed base answer misses what the anchor file says
are left out of training; --replay-fix-wrong: they learn the file's answer instead.

Why: with --replay self an anchor's target is the base model's own greedy answer, and on SmolLM2
that answer is often wrong: 88 of the 153 anchors with a short reference answer get one that does
not contain the reference's key word ("What colour is a carrot?" -> "A carrot is a carrot!",
"What is the capital of Canada?" -> "Canada, Canada, Canada. ..."). Such a row preserves nothing
the base knows, and its CE teaches the mistake, often a loop, as the way to answer that kind of
question. Round 16's variants all lost the same three dev colour facts the base knew ("What colour
is a stop sign?" -> "... a graphical representation of a graphical representation ..."), while
the 12 colour anchors teach tautologies. Only anchors are checked: a neighbour's file answer is one
reply among many right ones ("Who am I?" -> "You are the user."), not a fact to match.
"""
import re
from dataclasses import replace

from .tsv import DataError

# Words an answer shares with its question's frame, not its content ("A lemon IS yellow",
# "Mars LOOKS red", "Red and white MAKE pink").
FRAME = frozenset(
    "a an the is are was were be been of in on at to for and or do does did what which who whom "
    "how when where why me my you your i it its this that these those with by from into can could "
    "there here has have had make makes made look looks looked turn turns get gets called known "
    "also usually typically most some all about one s stand stands".split())
MAX_WORDS = 8   # a longer reference is free text (a motivational quote): nothing to check


def words(text: str) -> frozenset:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower().replace("color", "colour")))


def answer_keys(prompt: str, reference: str) -> frozenset:
    """The words of a short reference answer that its question does not already say (empty for a
    long reference, or one that adds nothing)."""
    if len(reference.split()) > MAX_WORDS:
        return frozenset()
    return words(reference) - words(prompt) - FRAME


def base_misses(prompt: str, reference: str, answer: str) -> bool:
    """The base's answer contains none of the reference's key words (False: nothing to check)."""
    keys = answer_keys(prompt, reference)
    return bool(keys) and not keys & words(answer)


def wrong_anchors(src, replay: dict) -> list:
    """The anchor rows of `src` whose replayed answer misses their reference (none for a source of
    another role)."""
    if src.role != "anchor":
        return []
    return [r for r in src.rows if r.prompt in replay
            and base_misses(r.prompt, r.target, replay[r.prompt])]


def fix_wrong_anchors(sources: list, replay: dict) -> tuple[dict, list]:
    """--replay-fix-wrong: (a copy of `replay` in which every anchor whose replayed answer misses
    its reference has the file's answer instead, the fixed tsv.Rows). The sources stay as they
    are; a prompt fixed in one file is fixed for all (the replay is keyed by prompt)."""
    fixed = [r for src in sources for r in wrong_anchors(src, replay)]
    return {**replay, **{r.prompt: r.target for r in fixed}}, fixed


def drop_wrong_anchors(sources: list, replay: dict) -> tuple[list, list]:
    """(the sources with every anchor row whose replayed answer misses its reference removed, the
    dropped tsv.Rows). A source left with no row is an error naming its file."""
    out, dropped = [], []
    for src in sources:
        if src.role != "anchor":
            out.append(src)
            continue
        wrong = wrong_anchors(src, replay)
        if len(wrong) == len(src.rows):
            raise DataError(f"{src.path}: --replay-drop-wrong leaves no row (the base misses "
                            f"every reference answer)")
        dropped += wrong
        gone = {id(r) for r in wrong}
        out.append(replace(src, rows=[r for r in src.rows if id(r) not in gone]))
    return out, dropped
