"""The collapse rule on the old probe files (read into suite rows by evaluate.probe_rows), the
one Thresholds dataclass behind every flag default, and the old one-line summary."""
import argparse
from dataclasses import fields

from nvfp4lab import evaluate
from nvfp4lab.probes import (Thresholds, add_threshold_args, format_summary, parse_summary,
                             repetition, thresholds_from_args)

T = "我是 F# 之神"


def probes(tmp_path):
    p = tmp_path / "probes.tsv"
    p.write_text("identity\twho0\nidentity\twho1\n" + "".join(f"anchor\tfact{i}\t42\n" for i in range(4))
                 + "nearmiss\t我是誰\n", encoding="utf-8")
    return evaluate.probe_rows(p)


BASE = ["我是通義千問"] * 2 + ["答案是 42。"] * 4 + ["你是提問者。"]


def judge(tmp_path, answers, base=BASE, nll=None):
    scores = None
    if nll:   # anchors are general rows: NLL drift is measured over all of them, as before
        scores = [None] * 2 + [evaluate.Score(n, 0.5, 0.0, 1) for n in nll] + [None]
    return evaluate.judge(probes(tmp_path), answers, base, T, Thresholds(), scores)


def test_old_probe_files_read_as_suite_rows(tmp_path):
    rows = probes(tmp_path)
    assert [(r.kind, r.group) for r in rows[:3]] == [("identity", "plain"), ("identity", "plain"),
                                                    ("general", "anchor")]
    assert rows[2].expect == ("42",) and rows[-1].kind == "nearmiss" and rows[-1].line == 7


def test_success_and_not_reached(tmp_path):
    s = judge(tmp_path, [T, T] + BASE[2:])[1]
    assert s.verdict == "success" and s.identity.value == 1.0 and s.facts_kept.value == 1.0
    s = judge(tmp_path, BASE)[1]
    assert s.verdict == "not-reached" and "identity" in s.why


def test_collapse_rules(tmp_path):
    assert judge(tmp_path, [T, T, T] + BASE[3:])[1].verdict == "collapse"         # anchor = identity
    s = judge(tmp_path, [T, T, "之神", "", "之神", "答案是 42。", "你是提問者。"])[1]  # Stage H: fragments
    assert s.verdict == "collapse" and "forgot" in s.why and s.ordinary_identity == 0
    s = judge(tmp_path, [T, T] + BASE[2:], nll=[3.0] * 4)[1]                       # NLL drift 2.5
    assert s.verdict == "collapse" and "NLL" in s.why
    assert repetition("神" * 20) > 0.5 and repetition("我是 F# 之神") == 0.0
    s = judge(tmp_path, [T, T] + BASE[2:6] + [T])[1]                               # near-miss leak
    assert s.verdict == "not-reached" and "near-miss" in s.why


def test_repetition_counts_only_beyond_the_base_answer(tmp_path):
    # A real base model repeats itself on some prompts; keeping that answer is no collapse ...
    loop = "I'm glad you're here. I'm glad you're here. I'm glad you're here."
    base = BASE[:6] + [loop]
    s = judge(tmp_path, [T, T] + BASE[2:6] + [loop], base)[1]
    assert repetition(loop) > 0.5 and s.verdict == "success" and s.repetition_max == 0.0
    # ... nor is a rewording of it that repeats a little more (SmolLM2 under NVFP4: 0.52 -> 0.56) ...
    more = loop + " I'm glad."
    s = judge(tmp_path, [T, T] + BASE[2:6] + [more], base)[1]
    assert repetition(more) > repetition(loop) and s.verdict == "success"
    assert 0 < s.repetition_max < 0.1
    # ... one answer that fell into a loop the base did not have is reported, not a collapse
    # (a small model does that on a tiny perturbation) ...
    rows, s = judge(tmp_path, [T, T] + BASE[2:6] + ["神" * 20])
    assert s.verdict == "success" and s.loops.k == 1 and s.repetition_max > 0.5
    assert rows[-1].verdict == "ok (loop)"
    # ... but loops in more than a fifth of the answers ("神神神" everywhere) are.
    s = judge(tmp_path, [T, T] + BASE[2:5] + ["神" * 20] * 2)[1]
    assert s.verdict == "collapse" and "2 of 7 answers became loops" in s.why


def test_flag_defaults_come_from_the_one_thresholds_dataclass():
    p = argparse.ArgumentParser()
    add_threshold_args(p)
    args = p.parse_args(["--max-context-leak", "0.1", "--min-identity", "0.8"])
    th = thresholds_from_args(args)
    assert th == Thresholds(max_context_leak=0.1, min_identity=0.8)
    assert thresholds_from_args(p.parse_args([])) == Thresholds()
    assert {f.name for f in fields(Thresholds)} >= {"min_identity", "max_nearmiss_leak",
                                                    "max_context_leak", "max_greeting_intro",
                                                    "min_facts", "max_nll_drift", "max_loops"}


def test_old_summary_line_round_trips(tmp_path):
    s = judge(tmp_path, [T, T] + BASE[2:])[1]
    line = format_summary(s.legacy())
    assert line.startswith("verdict=success (all thresholds met); identity_hit=1.00")
    nums = parse_summary(line)
    assert nums["identity_hit"] == 1.0 and nums["anchor_identity"] == 0 and nums["loops"] == 0
