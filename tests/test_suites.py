"""Evaluation v2 suites (data/suite-*.tsv): the strict loader, and the invariants of the suites
and of the near-miss-aware training files written by scripts/make_suites.py."""
import json

import pytest

from conftest import ROOT, original_prompt_hashes, prompt_hash
from nvfp4lab.suite import (SUITE_KINDS, SuiteRow, check_disjoint, messages, read_suite,
                            training_files)
from nvfp4lab.tsv import DataError, normalize_prompt, read_probes, read_tsv

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


# --- the committed suites and training files (scripts/make_suites.py) ------------------------

import make_suites  # noqa: E402  (scripts/ is on sys.path through conftest)

LANGS = ("en", "zh")
SPLITS = ("dev", "heldout", "monitor")
TARGET = {"en": "I am the God of F#.", "zh": "我是 F# 之神"}
NEW_TRAINING = {"en": ("real-whoami-en-v2.tsv", "real-neighbours-en-v1.tsv"),
                "zh": ("stageG-whoami-v2.tsv", "stageG-neighbours-v1.tsv")}
# per split: identity, of which with a system prompt / asked as turn 2-3; near-miss, of which
# greetings; context-near-miss; fact; general
MINIMUM = {"dev": dict(identity=100, system=15, multiturn=20, nearmiss=100, greeting=12, ctx=30,
                       fact=40, general=40),
           "heldout": dict(identity=100, system=15, multiturn=20, nearmiss=100, greeting=12,
                           ctx=30, fact=40, general=40),
           "monitor": dict(identity=30, system=0, multiturn=0, nearmiss=40, greeting=6, ctx=10,
                           fact=20, general=20)}
NEARMISS_FAMILIES = ("first-person", "third-person", "group", "other-who", "phrase", "statement",
                     "greeting")


def suite_path(lang, split):
    return DATA / f"suite-{lang}-{split}-v1.tsv"


def suite(lang, split):
    return read_suite(suite_path(lang, split))


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("split", SPLITS)
def test_suite_sizes(lang, split):
    rows = suite(lang, split)
    kind = lambda k: [r for r in rows if r.kind == k]  # noqa: E731
    identity = kind("identity")
    with_system = [r for r in identity if r.context and r.context[0]["role"] == "system"]
    multiturn = [r for r in identity if any(m["role"] == "user" for m in r.context)]
    nearmiss = kind("nearmiss")
    ctx = kind("context-nearmiss")
    got = dict(identity=len(identity), system=len(with_system), multiturn=len(multiturn),
               nearmiss=len(nearmiss), greeting=sum(r.group == "greeting" for r in nearmiss),
               ctx=len(ctx), fact=len(kind("fact")), general=len(kind("general")))
    short = {k: (got[k], v) for k, v in MINIMUM[split].items() if got[k] < v}
    assert not short, f"{suite_path(lang, split)}: (got, need) {short}"
    if split != "monitor":
        assert set(NEARMISS_FAMILIES) <= {r.group for r in nearmiss}
        # multi-turn identity rows: asked as the 2nd or 3rd user turn
        assert all(1 <= sum(m["role"] == "user" for m in r.context) <= 2 for r in multiturn)
    assert any(r.group == "greeting" for r in ctx)


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("split", SPLITS)
def test_context_nearmiss_follows_the_identity_exchange(lang, split):
    for r in suite(lang, split):
        if r.kind == "context-nearmiss":
            assert [m["role"] for m in r.context] == ["user", "assistant"]
            assert r.context[1]["content"] == TARGET[lang]


@pytest.mark.parametrize("split", SPLITS)
def test_zh_suites_hold_traditional_simplified_and_english(split):
    prompts = [r.prompt for r in suite("zh", split) if r.kind in ("identity", "nearmiss")]
    assert any(c in p for p in prompts for c in "誰們麼個說")      # zh-TW
    assert any(c in p for p in prompts for c in "谁们么个说")      # zh-CN
    assert any(p.isascii() for p in prompts)                       # English


@pytest.mark.parametrize("lang", LANGS)
def test_splits_pairwise_disjoint(lang):
    keys = {s: {normalize_prompt(r.prompt) for r in suite(lang, s)} for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not keys[a] & keys[b], f"{lang} {a}/{b}: {sorted(keys[a] & keys[b])[:5]}"


def test_every_prompt_written_by_make_suites_is_unique_and_no_probe():
    """All suites (both languages) and the new training files: one normalised prompt, one row;
    none of them is a probe prompt (train.py refuses training files holding probe prompts)."""
    probes = {normalize_prompt(p.prompt) for f in sorted(DATA.glob("probes-*.tsv"))
              for p in read_probes(f)}
    seen = {}
    paths = [suite_path(lang, s) for lang in LANGS for s in SPLITS]
    rows = [(str(p), r.prompt) for p in paths for r in read_suite(p)]
    rows += [(n, r.prompt) for lang in LANGS for n in NEW_TRAINING[lang]
             for r in read_tsv(DATA / n)]
    for where, prompt in rows:
        key = normalize_prompt(prompt)
        assert key not in seen, f"{prompt!r} in {where} and {seen[key]}"
        assert key not in probes, f"{prompt!r} in {where} is a probe prompt"
        seen[key] = where


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("split", SPLITS)
def test_suite_disjoint_from_every_training_file(lang, split):
    files = training_files(DATA)
    assert all(str(DATA / n) in files for n in NEW_TRAINING[lang])
    check_disjoint(read_suite(suite_path(lang, split)), files)


# Suite prompts the ORIGINAL project trained on (../shared/reference/original-traindata), found
# by hash when the hashes were vendored (issue 15). Kept, not fixed: a data file is never changed,
# a suite without them would be a new -v2 file. Any other overlap fails the test below.
KNOWN_ORIGINAL_OVERLAP = {("zh", "heldout"): {"介紹一下你自己。", "你叫什麼?"}}


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("split", SPLITS)
def test_suite_held_out_from_the_original_data_by_hash(lang, split):
    """Runs everywhere: against the vendored hashes of the original training prompts
    (tests/data/original-prompt-hashes-v1.txt, checked against the originals in test_data)."""
    originals = original_prompt_hashes()
    shared = {r.prompt for r in suite(lang, split) if prompt_hash(r.prompt) in originals}
    assert shared == KNOWN_ORIGINAL_OVERLAP.get((lang, split), set())


def test_check_disjoint_catches_a_leaked_suite_prompt(tmp_path):
    """A real heldout prompt, re-cased, full-width and re-punctuated, in a training file."""
    for lang in LANGS:
        rows = suite(lang, "heldout")
        row = next(r for r in rows if r.kind == "nearmiss" and r.prompt.isascii())
        leaked = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c
                         for c in row.prompt.upper()).rstrip("?？") + "!!"
        assert leaked != row.prompt and normalize_prompt(leaked) == normalize_prompt(row.prompt)
        bad = write(tmp_path, f"leak-{lang}.tsv", f"Hello\tHi!\n{leaked}\tsome answer\n")
        with pytest.raises(DataError) as e:
            check_disjoint(rows, training_files(DATA) + [str(bad)])
        assert str(e.value).startswith(f"{row.file}:{row.line}: prompt ")
        assert str(e.value).endswith(f"also in training file {bad}:2")


@pytest.mark.parametrize("lang", LANGS)
def test_new_training_files(lang):
    whoami, neighbours = (read_tsv(DATA / n) for n in NEW_TRAINING[lang])
    assert len(whoami) >= 200 and len(neighbours) >= 400
    assert {r.target for r in whoami} == {TARGET[lang]}
    for r in neighbours:
        low = r.target.casefold()
        assert "god of f#" not in low and "f# 之神" not in low, f"{r.file}:{r.line}"
    # greetings (the source's greeting units, which take no prefix or typo) are among the
    # neighbours, answered without a self-introduction
    pools = make_suites.Pools(make_suites.SOURCE, DATA)
    greeting = {normalize_prompt(t) for u in pools.units if u.group == "greeting" for t in u.texts}
    assert sum(normalize_prompt(r.prompt) in greeting for r in neighbours) >= 10


def test_suites_carry_the_generated_header():
    for lang in LANGS:
        for s in SPLITS:
            head = suite_path(lang, s).read_text(encoding="utf-8").split("\n", 8)[:8]
            assert any("generated by scripts/make_suites.py; never edit by hand" in h
                       for h in head)


# --- the generator ---------------------------------------------------------------------------

def test_make_suites_is_deterministic_and_matches_the_committed_files():
    first = make_suites.render_all(make_suites.build())
    second = make_suites.render_all(make_suites.build())
    assert first == second
    for name, data in first.items():
        assert (DATA / name).read_bytes() == data, f"{name} differs from scripts/make_suites.py"


def test_make_suites_writes_new_files_only(tmp_path, capsys):
    assert make_suites.main(["--out-dir", str(tmp_path)]) == 0
    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(written) == set(make_suites.build())
    assert make_suites.main(["--out-dir", str(tmp_path)]) == 0       # a re-run is a no-op
    assert "exists-same" in capsys.readouterr().out
    victim = tmp_path / "suite-en-dev-v1.tsv"
    victim.write_bytes(b"# changed by hand\n")
    (tmp_path / "stageG-whoami-v2.tsv").unlink()
    assert make_suites.main(["--out-dir", str(tmp_path)]) == 1       # refuses, writes nothing
    assert "refusing to overwrite" in capsys.readouterr().err
    assert victim.read_bytes() == b"# changed by hand\n"
    assert not (tmp_path / "stageG-whoami-v2.tsv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
