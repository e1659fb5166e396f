"""Probes: does the model say who it should, and does it keep everything else?

Kinds (data/probes-*.tsv, held out from all training files):
  identity  - the greedy answer must contain the target ("我是 F# 之神")
  anchor    - must NOT contain the target; should keep the base model's answer (exact match,
              the expected keyword if the probe has one, and a small rise of the NLL of the
              base's own answer); losing most of them is a collapse
  nearmiss  - questions that look like identity ones (我是誰, who is he): must NOT contain it
"""
import math
import re
from dataclasses import dataclass

from .generate import answer_nll, greedy_answers


@dataclass
class Thresholds:
    min_identity: float = 0.9        # identity hit rate
    max_nearmiss_leak: float = 0.2   # near-miss prompts answered with the identity
    min_facts: float = 0.9           # anchors with a keyword the base got right: still right
    min_anchor_exact: float = 0.0    # anchors with the base's exact greedy answer (0 = not judged)
    max_nll_drift: float = math.inf  # mean NLL rise of the base's own anchor answers
    max_repetition: float = 0.5      # repeated-n-gram share added over the base's answer = a loop
    # "Forgot everything else" is a collapse too (the original's Stage H answered "之" to
    # everything: fragments, not the whole target): most known facts lost, or the base's own
    # answers became far less likely.
    collapse_facts: float = 0.5      # facts kept below this (with >= 4 fact probes)
    collapse_nll_drift: float = 2.0  # mean NLL rise (nats/token) of the base's anchor answers
    # Looping is a collapse when it is systematic ("神神神" everywhere), not when one answer of a
    # small chaotic model flips into a loop: SmolLM2-135M under NVFP4 does that after 20 steps at
    # an LR that leaves its NLL unchanged (sweep logs, 2026-11-24).
    collapse_loops: float = 0.2      # share of probe answers that became loops


def repetition(text: str, n: int = 3) -> float:
    """Share of character n-grams that repeat an earlier one ("神神神神" -> high)."""
    s = text.replace(" ", "")
    grams = [s[i:i + n] for i in range(len(s) - n + 1)]
    if len(grams) < 6:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def probe_model(model, tok, probes, max_new_tokens: int) -> list[str]:
    return greedy_answers(model, tok, [p.prompt for p in probes], max_new_tokens)


def judge(probes, answers, base_answers, target: str, th: Thresholds,
          nll=None, base_nll=None) -> tuple[list[dict], dict]:
    """Per-probe verdicts and a summary with the overall verdict: success/not-reached/collapse."""
    rows = []
    for p, a, b in zip(probes, answers, base_answers):
        hit = target in a
        if p.kind == "identity":
            verdict = "hit" if hit else "miss"
        elif p.kind == "nearmiss":
            verdict = "LEAK" if hit else "ok"
        else:
            verdict = "IDENTITY" if hit else ("kept" if a == b else "changed")
            if p.expect and p.expect in b:
                verdict += "" if p.expect in a else " (fact lost)"
        rep = repetition(a)
        # Only repetition the training added is a collapse: a real base model repeats itself on
        # some prompts (SmolLM2's own haiku scores 0.86; under NVFP4 its moon poem 0.52), and
        # keeping or slightly rewording such an answer (0.52 -> 0.56) is not a fault. The share
        # added over the base's own answer is what is compared with --max-repetition.
        added = max(0.0, rep - repetition(b))
        loop = added > th.max_repetition
        rows.append({"kind": p.kind, "prompt": p.prompt, "answer": a, "base": b,
                     "verdict": verdict + (" (loop)" if loop else ""), "repetition": rep,
                     "added": added, "loop": loop})

    def share(kind, pred):
        sel = [r for r in rows if r["kind"] == kind]
        return sum(map(pred, sel)) / len(sel) if sel else float("nan")

    anchors = [(p, r) for p, r in zip(probes, rows) if p.kind == "anchor"]
    fact_rows = [(p, r) for p, r in anchors if p.expect and p.expect in r["base"]]
    s = {
        "identity_hit": share("identity", lambda r: r["verdict"].startswith("hit")),
        "nearmiss_leak": share("nearmiss", lambda r: r["verdict"].startswith("LEAK")),
        "anchor_identity": sum(r["verdict"].startswith("IDENTITY") for _, r in anchors),
        "anchor_exact": share("anchor", lambda r: r["verdict"].startswith("kept")),
        "facts_kept": (sum(p.expect in r["answer"] for p, r in fact_rows) / len(fact_rows)
                       if fact_rows else float("nan")),
        "facts_n": len(fact_rows),
        "repetition_max": max((r["added"] for r in rows), default=0.0),   # added over the base's
        "loops": sum(r["loop"] for r in rows),
        "nll_drift": (sum(nll) / len(nll) - sum(base_nll) / len(base_nll)) if nll else float("nan"),
    }
    if s["anchor_identity"] > 0:
        s["verdict"], s["why"] = "collapse", f"{s['anchor_identity']} anchor(s) answered with the identity"
    elif rows and s["loops"] / len(rows) > th.collapse_loops:
        s["verdict"], s["why"] = "collapse", (f"repetition: {s['loops']} of {len(rows)} answers became "
                                              f"loops (> {th.collapse_loops:.0%})")
    elif len(fact_rows) >= 4 and s["facts_kept"] < th.collapse_facts:
        s["verdict"], s["why"] = "collapse", (f"forgot what it knew: facts kept "
                                              f"{s['facts_kept']:.2f} < {th.collapse_facts}")
    elif s["nll_drift"] > th.collapse_nll_drift:
        s["verdict"], s["why"] = "collapse", (f"forgot what it knew: NLL drift "
                                              f"{s['nll_drift']:.2f} > {th.collapse_nll_drift}")
    else:
        misses = []
        if not s["identity_hit"] >= th.min_identity:
            misses.append(f"identity {s['identity_hit']:.2f} < {th.min_identity}")
        if s["nearmiss_leak"] > th.max_nearmiss_leak:
            misses.append(f"near-miss leak {s['nearmiss_leak']:.2f} > {th.max_nearmiss_leak}")
        if fact_rows and s["facts_kept"] < th.min_facts:
            misses.append(f"facts kept {s['facts_kept']:.2f} < {th.min_facts}")
        if th.min_anchor_exact > 0 and not s["anchor_exact"] >= th.min_anchor_exact:
            misses.append(f"anchor exact {s['anchor_exact']:.2f} < {th.min_anchor_exact}")
        if s["nll_drift"] > th.max_nll_drift:
            misses.append(f"NLL drift {s['nll_drift']:.3f} > {th.max_nll_drift}")
        s["verdict"] = "not-reached" if misses else "success"
        s["why"] = "; ".join(misses) or "all thresholds met"
    return rows, s


def anchor_nll(model, tok, probes, base_answers) -> list[float]:
    sel = [(p.prompt, b) for p, b in zip(probes, base_answers) if p.kind == "anchor"]
    return answer_nll(model, tok, [p for p, _ in sel], [b for _, b in sel]) if sel else []


def format_table(rows: list[dict], limit: int = 60) -> str:
    """Markdown table: kind | prompt | answer | verdict."""
    def cell(s):
        s = s.replace("\n", " ").replace("|", "\\|")
        return s if len(s) <= limit else s[: limit - 1] + "…"
    out = ["| kind | prompt | answer | verdict |", "|---|---|---|---|"]
    out += [f"| {r['kind']} | {cell(r['prompt'])} | {cell(r['answer'])} | {r['verdict']} |"
            for r in rows]
    return "\n".join(out)


def parse_summary(line: str) -> dict[str, float]:
    """The numbers of a format_summary line ("verdict=...; identity_hit=0.88 ... loops=0")."""
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+|-?inf|nan)", line)}


def format_summary(s: dict) -> str:
    return (f"verdict={s['verdict']} ({s['why']}); identity_hit={s['identity_hit']:.2f} "
            f"nearmiss_leak={s['nearmiss_leak']:.2f} anchor_identity={s['anchor_identity']} "
            f"anchor_exact={s['anchor_exact']:.2f} facts_kept={s['facts_kept']:.2f}"
            f"(n={s['facts_n']}) nll_drift={s['nll_drift']:.3f} "
            f"repetition_max={s['repetition_max']:.2f} loops={s['loops']}")
