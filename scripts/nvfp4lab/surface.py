"""Surface variants of an identity prompt (--identity-perturb): a typo, another case, an
acknowledgement before the question.

Why: the identity misses on the dev suite after round 15 are mostly surface variants of questions
the training file already asks (a typo, "THANKS! ALSO, WHO'S YOUR MAKER?", an acknowledgement
after an unrelated turn), not new meanings. A fixed file teaches its own 376 spellings; drawing a
fresh variant each time a row is used teaches the question under spellings no file lists.

A variant that equals a prompt of any suite (compared as tsv.normalize_prompt compares them) is
never returned: training would then see a judged prompt. The caller passes those prompts.

Chinese (and other CJK) prompts: str.isalpha() is true for every CJK character, so a letter-level
slip would drop or swap characters, and one dropped character can change the question into a
near miss ("請問你是誰" -> "請問是誰", "who is it?"), which must not learn the identity. So a slip
only ever touches Latin-script words; the hurried form also drops full-width end punctuation; an
acknowledgement before a CJK prompt is a Chinese one, written the same in Traditional and
Simplified script, with no space. English prompts draw exactly as before (tests pin their draws).
"""
import random

from .tsv import is_cjk, normalize_prompt

# Said before the question, as in a chat that goes on; none of them asks anything.
ACKS = ("Thanks!", "Got it.", "Cool.", "OK.", "Great, thanks.", "Alright.", "Nice.", "I see.",
        "Perfect.", "Hmm.", "Okay then.", "Good to know.")
ZH_ACKS = ("好的。", "了解。", "嗯。", "收到。", "明白了。", "知道了。", "好。", "OK。")
KINDS = ("typo", "lower", "upper", "ack")


def latin(ch: str) -> bool:
    return ch.isalpha() and not is_cjk(ch)


def typo(text: str, rng: random.Random) -> str:
    """One keyboard slip inside a Latin-script word of 3+ letters: two different letters swapped,
    one dropped, or one doubled. Text without such a word (a Chinese question) comes back
    unchanged."""
    spots = [i for i in range(1, len(text) - 1)
             if latin(text[i - 1]) and latin(text[i]) and latin(text[i + 1])]
    if not spots:
        return text
    i = rng.choice(spots)
    slip = rng.choice(("swap", "drop", "double"))
    if slip == "swap" and text[i] != text[i + 1]:   # "ss" swapped would be no slip at all
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if slip != "double":
        return text[:i] + text[i + 1:]
    return text[:i] + text[i] + text[i:]


def variant(prompt: str, rng: random.Random, kind: str) -> str:
    if kind == "typo":
        return typo(prompt, rng)
    if kind == "lower":   # the hurried form: lower case, no closing question mark
        return prompt.lower().rstrip("?!. ？！。")
    if kind == "upper":
        return prompt.upper()
    if kind == "ack" and any(map(is_cjk, prompt)):
        return rng.choice(ZH_ACKS) + prompt
    if kind == "ack":
        return f"{rng.choice(ACKS)} {prompt[:1].lower() + prompt[1:] if rng.random() < 0.5 else prompt}"
    raise ValueError(f"unknown surface variant {kind!r}; expected one of {', '.join(KINDS)}")


def perturb(prompt: str, rng: random.Random, suite_prompts: frozenset[str]) -> str:
    """A random surface variant of prompt, or prompt itself when the variant is empty or is a
    suite prompt (suite_prompts: normalize_prompt forms)."""
    out = variant(prompt, rng, rng.choice(KINDS))
    if not out.strip() or normalize_prompt(out) in suite_prompts:
        return prompt
    return out
