"""Evaluation v2 suites (data/suite-*.tsv): the strict loader, and the invariants of the suites
and of the near-miss-aware training files written by scripts/make_suites.py."""
import json

import pytest

from conftest import ROOT
from nvfp4lab.suite import (SUITE_KINDS, SuiteRow, check_disjoint, messages, read_suite,
                            training_files)
from nvfp4lab.tsv import DataError, normalize_prompt, read_tsv

DATA = ROOT / "data"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8"))
    return p


def ctx(*msgs):
    return json.dumps([{"role": r, "content": c} for r, c in msgs], ensure_ascii=False)


# --- read_suite ------------------------------------------------------------------------------

def test_read_suite_rows_and_messages(tmp_path):
    c = ctx(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"))
    p = write(tmp_path, "s.tsv",
              "# header\n\nidentity\tplain\tWho are you?\t\t\r\n"
              "fact\tarithmetic\tWhat is 3 + 4?\t7| seven\t\n"
              f"identity\tmultiturn\tAnd who are you?\t\t{c}\n"
              "nearmiss\tgreeting\tHi there\t\t\n")
    rows = read_suite(p)
    assert [(r.kind, r.group, r.line) for r in rows] == [
        ("identity", "plain", 3), ("fact", "arithmetic", 4), ("identity", "multiturn", 5),
        ("nearmiss", "greeting", 6)]
    assert rows[0].expect == () and rows[0].context == () and rows[0].file == str(p)
    assert rows[1].expect == ("7", "seven")
    assert messages(rows[0]) == [{"role": "user", "content": "Who are you?"}]
    assert messages(rows[2]) == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"},
                                 {"role": "user", "content": "And who are you?"}]
    assert isinstance(rows[0], SuiteRow)


def test_read_suite_system_only_context(tmp_path):
    p = write(tmp_path, "s.tsv", f"identity\tsystem\tWho are you?\t\t{ctx(('system', 'Hi.'))}\n")
    assert messages(read_suite(p)[0])[0] == {"role": "system", "content": "Hi."}


GOOD = "identity\tplain\tok prompt\t\t\n"


@pytest.mark.parametrize("bad, what", [
    ("identiti\tplain\tWho are you?\t\t", "unknown suite kind"),
    ("identity\tplain\tWho are you?\t", "expected kind<TAB>group"),           # missing column
    ("identity\tplain\tWho are you?", "expected kind<TAB>group"),
    ("identity\tplain\tWho are you?\t\t\t", "expected kind<TAB>group"),       # extra column
    ("identity\tplain\t  \t\t", "empty prompt"),
    ("identity\t\tWho are you?\t\t", "empty group"),
    ("fact\tcapital\tCapital of France?\t\t", "fact row without expect"),
    ("fact\tcapital\tCapital of France?\tParis||\t", "empty alternative"),
    ("nearmiss\tfirst-person\tWho am I?\tyou\t", "expect 'you' on a nearmiss row"),
    ("general\tcreative\tWrite a haiku.\train\t", "only fact rows have expect"),
    ("identity\tplain\tWho are you?\t\t[{\"role\": \"user\", ", "not valid JSON"),
    ("identity\tplain\tWho are you?\t\t{\"role\": \"user\"}", "non-empty JSON array"),
    ("identity\tplain\tWho are you?\t\t[]", "non-empty JSON array"),
    ("identity\tplain\tWho are you?\t\t" + ctx(("bot", "x")), "unknown role"),
    ("identity\tplain\tWho are you?\t\t" + ctx(("user", "a"), ("system", "b")),
     "system message may only come first"),
    ("identity\tplain\tWho are you?\t\t" + ctx(("user", "a"), ("user", "b")), "alternate"),
    ("identity\tplain\tWho are you?\t\t" + ctx(("assistant", "a")), "alternate"),
    ("identity\tplain\tWho are you?\t\t" + ctx(("user", "a")), "end with an assistant"),
    ("identity\tplain\tWho are you?\t\t" + ctx(("user", "a"), ("assistant", " ")),
     "non-empty string"),
    ("identity\tplain\tWho are you?\t\t[{\"role\": \"user\"}]", "exactly 'role' and 'content'"),
    ("identity\ttypo\tOK  PROMPT!\t\t", "duplicate prompt"),
])
def test_read_suite_errors_name_file_and_line(tmp_path, bad, what):
    p = write(tmp_path, "bad.tsv", "# header\n" + GOOD + "\n" + bad + "\n")
    with pytest.raises(DataError) as e:
        read_suite(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4:") and what in msg and "\n" not in msg


def test_read_suite_same_prompt_other_context_is_not_a_duplicate(tmp_path):
    c = ctx(("user", "Who are you?"), ("assistant", "I am the God of F#."))
    p = write(tmp_path, "s.tsv", f"nearmiss\tfirst-person\tWho am I?\t\t\n"
                                 f"context-nearmiss\tfirst-person\tWho am I?\t\t{c}\n")
    assert len(read_suite(p)) == 2


# --- training_files / check_disjoint ---------------------------------------------------------

def test_training_files_skips_probes_suites_and_proxy_corpus(tmp_path):
    for name in ["a-v1.tsv", "probes-x.tsv", "suite-en-dev-v1.tsv", "proxy-knowledge-v1.tsv",
                 "b.tsv", "notes.txt"]:
        write(tmp_path, name, "q\tt\n")
    assert training_files(tmp_path) == [str(tmp_path / "a-v1.tsv"), str(tmp_path / "b.tsv")]


def test_check_disjoint_catches_a_leak_with_other_punctuation_case_and_width(tmp_path):
    suite = write(tmp_path, "suite.tsv", "identity\tplain\tWho are you?\t\t\n"
                                         "identity\tplain\t你是誰？\t\t\n")
    rows = read_suite(suite)
    clean = write(tmp_path, "clean.tsv", "Who am I?\tI don't know.\n")
    check_disjoint(rows, [clean])
    leak = write(tmp_path, "leak.tsv", "# c\nHello\tHi\nＷＨＯ  are you!!\tI am the God of F#.\n")
    with pytest.raises(DataError) as e:
        check_disjoint(rows, [clean, leak])
    assert str(e.value).startswith(f"{suite}:1: prompt 'Who are you?' also in training file "
                                   f"{leak}:3")
    leak_zh = write(tmp_path, "leak2.tsv", "你是誰!\t我是 F# 之神\n")
    with pytest.raises(DataError, match=r"suite\.tsv:2: .*/leak2\.tsv:1"):
        check_disjoint(rows, [leak_zh])
