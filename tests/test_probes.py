"""The collapse rule: what counts as success, not reached, and collapse."""
from nvfp4lab.probes import Thresholds, judge, repetition
from nvfp4lab.tsv import Probe

T = "我是 F# 之神"


def probes():
    ps = [Probe("identity", f"who{i}", "", "p", i) for i in range(2)]
    ps += [Probe("anchor", f"fact{i}", "42", "p", 10 + i) for i in range(4)]
    ps += [Probe("nearmiss", "我是誰", "", "p", 20)]
    return ps


BASE = ["我是通義千問"] * 2 + ["答案是 42。"] * 4 + ["你是提問者。"]


def verdict(answers, nll=None):
    return judge(probes(), answers, BASE, T, Thresholds(), nll, [0.5] * 4 if nll else None)[1]


def test_success_and_not_reached():
    s = verdict([T, T] + BASE[2:])
    assert s["verdict"] == "success" and s["identity_hit"] == 1.0 and s["facts_kept"] == 1.0
    s = verdict(BASE)
    assert s["verdict"] == "not-reached" and "identity" in s["why"]


def test_collapse_rules():
    assert verdict([T, T, T] + BASE[3:])["verdict"] == "collapse"              # anchor = identity
    s = verdict([T, T, "之神", "", "之神", "答案是 42。", "你是提問者。"])      # Stage H: fragments
    assert s["verdict"] == "collapse" and "forgot" in s["why"] and s["anchor_identity"] == 0
    s = verdict([T, T] + BASE[2:], nll=[3.0] * 4)                              # NLL drift 2.5
    assert s["verdict"] == "collapse" and "NLL" in s["why"]
    assert repetition("神" * 20) > 0.5 and repetition("我是 F# 之神") == 0.0
    s = verdict([T, T] + BASE[2:6] + [T])                                      # near-miss leak
    assert s["verdict"] == "not-reached" and "near-miss" in s["why"]


def test_repetition_counts_only_beyond_the_base_answer():
    # A real base model repeats itself on some prompts; keeping that answer is no collapse ...
    loop = "I'm glad you're here. I'm glad you're here. I'm glad you're here."
    base = BASE[:6] + [loop]
    s = judge(probes(), [T, T] + BASE[2:6] + [loop], base, T, Thresholds())[1]
    assert repetition(loop) > 0.5 and s["verdict"] == "success" and s["repetition_max"] == 0.0
    # ... nor is a rewording of it that repeats a little more (SmolLM2 under NVFP4: 0.52 -> 0.56) ...
    more = loop + " I'm glad."
    s = judge(probes(), [T, T] + BASE[2:6] + [more], base, T, Thresholds())[1]
    assert repetition(more) > repetition(loop) and s["verdict"] == "success"
    assert 0 < s["repetition_max"] < 0.1
    # ... one answer that fell into a loop the base did not have is reported, not a collapse
    # (a small model does that on a tiny perturbation) ...
    rows, s = judge(probes(), [T, T] + BASE[2:6] + ["神" * 20], BASE, T, Thresholds())
    assert s["verdict"] == "success" and s["loops"] == 1 and s["repetition_max"] > 0.5
    assert rows[-1]["verdict"] == "ok (loop)"
    # ... but loops in more than a fifth of the answers ("神神神" everywhere) are.
    s = judge(probes(), [T, T] + BASE[2:5] + ["神" * 20] * 2, BASE, T, Thresholds())[1]
    assert s["verdict"] == "collapse" and "2 of 7 answers became loops" in s["why"]
