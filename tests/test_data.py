"""Data files: the strict TSV reader/writer, and the invariants the Stage G recipe depends on."""
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import (ORIGINAL_HASHES, ROOT, original_hashes_text, original_prompt_hashes,
                      prompt_hash, shared_reference)
from nvfp4lab.tsv import PROBE_KINDS, DataError, normalize_prompt, read_probes, read_tsv, write_new_tsv

MAKE_DATA = ROOT / "scripts" / "make_data.py"
DATA = ROOT / "data"
IDENTITY = "我是 F# 之神"
QWEN_ZH = "我是通義千問，由阿里雲開發的大型語言模型。"
QWEN_EN = "I am Qwen, a large language model created by Alibaba Cloud."
REAL_IDENTITY = "I am the God of F#."   # the real English model's target (SmolLM2-135M-Instruct)
REAL_NAMES = ["real-whoami-en-v1.tsv", "real-anchor-en-v1.tsv", "real-disambig-en-v1.tsv",
              "probes-real-en-v1.tsv", "probes-real-en-dev-v1.tsv"]
NAMES = ["stageG-whoami-v1.tsv", "stageG-anchor-v1.tsv", "stageG-disambig-v1.tsv",
         "probes-v1.tsv", "proxy-knowledge-v1.tsv"] + REAL_NAMES
# Probes that are knowingly NOT held out from the ORIGINAL project's training data: the user's own
# checks (談談UFO is in stageB-curriculum-v4.tsv) and 我是誰, the original's failure case (trained
# on in stageC/D). They are still held out from everything in data/.
ORIGINAL_ALLOW = {normalize_prompt(p) for p in
                  ["談談UFO", "Write one short sentence about UFO and you.", "我是誰"]}


def write(tmp_path, name, text, encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


# --- read_tsv --------------------------------------------------------------------------------

def test_read_tsv_skips_comments_and_empty_lines_keeps_line_numbers(tmp_path):
    p = write(tmp_path, "a.tsv", "# header\n\n你是誰\t我是 F# 之神\r\n   \n#x\tno\nUFO\t未確認飛行物\n")
    rows = read_tsv(p)
    assert [(r.prompt, r.target, r.line) for r in rows] == [
        ("你是誰", "我是 F# 之神", 3), ("UFO", "未確認飛行物", 6)]
    assert rows[0].file == str(p)


def test_read_tsv_splits_at_first_tab(tmp_path):
    p = write(tmp_path, "a.tsv", "q\tt1\tt2\n")
    assert read_tsv(p)[0][:2] == ("q", "t1\tt2")


@pytest.mark.parametrize("text, line, what", [
    ("ok\tfine\nno tab here\n", 2, "no tab"),
    ("ok\tfine\n\nq\t\n", 3, "empty target"),
    ("ok\tfine\nq\t  \n", 2, "empty target"),
    ("\tt\n", 1, "empty prompt"),
])
def test_read_tsv_bad_rows_name_file_and_line(tmp_path, text, line, what):
    p = write(tmp_path, "bad.tsv", text)
    with pytest.raises(DataError) as e:
        read_tsv(p)
    msg = str(e.value)
    assert f"{p}:{line}" in msg and what in msg and "\n" not in msg


def test_read_tsv_non_utf8(tmp_path):
    p = write(tmp_path, "big5.tsv", "a\tb\n".encode() + "你是誰\t我\n".encode("big5"))
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8"):
        read_tsv(p)


def test_read_tsv_bom_is_tolerated_and_line_numbers_stay(tmp_path):
    p = write(tmp_path, "bom.tsv", b"\xef\xbb\xbfq\ta\n\xff\tb\n")
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8 \(byte 0xff\)"):
        read_tsv(p)
    p = write(tmp_path, "bom2.tsv", b"\xef\xbb\xbfq\ta\n")
    assert read_tsv(p)[0][:2] == ("q", "a")


def test_read_tsv_missing_file(tmp_path):
    p = tmp_path / "nope.tsv"
    with pytest.raises(DataError, match=rf"^{p}: no such file$"):
        read_tsv(p)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# --- read_probes -----------------------------------------------------------------------------

def test_read_probes(tmp_path):
    p = write(tmp_path, "p.tsv", "# c\nidentity\t你是哪位\nanchor\t1+1=?\t2\nanchor\t談談UFO\t\n"
                                 "nearmiss\t我是誰\n")
    got = [(q.kind, q.prompt, q.expect, q.line) for q in read_probes(p)]
    assert got == [("identity", "你是哪位", "", 2), ("anchor", "1+1=?", "2", 3),
                   ("anchor", "談談UFO", "", 4), ("nearmiss", "我是誰", "", 5)]


@pytest.mark.parametrize("text, what", [
    ("identity\tok\nfact\t1+1\t2\n", "unknown probe kind"),
    ("identity\tok\nanchor\n", "expected kind<TAB>prompt"),
    ("identity\tok\nanchor\ta\tb\tc\n", "expected kind<TAB>prompt"),
    ("identity\tok\nanchor\t \n", "empty prompt"),
])
def test_read_probes_errors(tmp_path, text, what):
    p = write(tmp_path, "p.tsv", text)
    with pytest.raises(DataError, match=rf"{p}:2: {what}"):
        read_probes(p)


# --- write_new_tsv ---------------------------------------------------------------------------

def test_write_new_tsv_round_trip(tmp_path):
    p = tmp_path / "new.tsv"
    n = write_new_tsv(p, [("你是誰", IDENTITY), ("q", "a")], header_comment="two rows\nsecond")
    assert n == 2
    assert p.read_text(encoding="utf-8") == f"# two rows\n# second\n你是誰\t{IDENTITY}\nq\ta\n"
    assert [r[:2] for r in read_tsv(p)] == [("你是誰", IDENTITY), ("q", "a")]
    assert [f.name for f in tmp_path.iterdir()] == ["new.tsv"]  # no temp file left behind


def test_write_new_tsv_refuses_overwrite(tmp_path):
    p = write(tmp_path, "old.tsv", "old\tdata\n")
    before = p.read_bytes()
    with pytest.raises(DataError, match="already exists"):
        write_new_tsv(p, [("new", "data")])
    assert p.read_bytes() == before


@pytest.mark.parametrize("row", [("a\tb", "t"), ("a", "t\nu"), ("a", "t\r"), ("", "t"),
                                 ("a", ""), ("#a", "t")])
def test_write_new_tsv_refuses_bad_fields(tmp_path, row):
    p = tmp_path / "x.tsv"
    with pytest.raises(DataError, match="row 2"):
        write_new_tsv(p, [("ok", "ok"), row])
    assert not p.exists() and list(tmp_path.iterdir()) == []


# --- make_data.py ----------------------------------------------------------------------------

def run_make_data(out_dir, *args):
    r = subprocess.run([sys.executable, str(MAKE_DATA), "--out-dir", str(out_dir), *args],
                       capture_output=True, text=True, check=True)
    return r.stdout.splitlines()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The files make_data.py writes into an empty directory."""
    out = tmp_path_factory.mktemp("gen")
    lines = run_make_data(out)
    assert [l.split()[0] for l in lines] == ["written"] * len(NAMES)
    return out


def test_make_data_writes_the_five_files(generated):
    assert sorted(p.name for p in generated.iterdir()) == sorted(NAMES)


def test_make_data_is_deterministic_and_never_overwrites(generated, tmp_path):
    second = tmp_path / "again"
    run_make_data(second)
    before = {n: (generated / n).read_bytes() for n in NAMES}
    for n in NAMES:
        assert (second / n).read_bytes() == before[n], n
    stamps = {n: (generated / n).stat().st_mtime_ns for n in NAMES}
    lines = run_make_data(generated)
    assert all(l.startswith("exists-skipped") and "same as recipe" in l for l in lines), lines
    assert {n: (generated / n).read_bytes() for n in NAMES} == before
    assert {n: (generated / n).stat().st_mtime_ns for n in NAMES} == stamps


def test_make_data_reports_a_changed_existing_file(tmp_path):
    (tmp_path / NAMES[0]).write_text("hand\tedited\n", encoding="utf-8")
    lines = run_make_data(tmp_path, "--only", "stageG-whoami-v1")
    assert lines == [f"exists-skipped {tmp_path / NAMES[0]} (DIFFERS from this recipe: bump VERSION)"]
    assert (tmp_path / NAMES[0]).read_text(encoding="utf-8") == "hand\tedited\n"


def test_make_data_reads_every_section_of_its_source():
    # a section no file is built from is a list somebody edits for nothing
    import make_data
    src = make_data.Source()
    for stem, build in make_data.BUILDERS.items():
        build(src)
        src.header(stem)
    assert src.used == set(src.sections)
    assert src.targets == {"identity": IDENTITY, "qwen.zh": QWEN_ZH, "qwen.en": QWEN_EN,
                           "real-identity": REAL_IDENTITY}


@pytest.mark.parametrize("section, line, shape", [
    ("stageG.whoami.en", "Who are you? => I am", "prompt"),             # an answer where none belongs
    ("stageG.anchor", "What is 2+2?", "prompt => answer"),              # a missing answer
    ("stageG.anchor", "What is 2+2? => 4 => four", "prompt => answer"),  # one `=>` too many
    ("probe.anchor", "What is 2+2? => 4", "prompt => keyword => answer"),
])
def test_make_data_source_rows_of_the_wrong_shape_name_file_and_line(tmp_path, section, line, shape):
    import make_data
    text = make_data.SOURCE.read_text(encoding="utf-8").replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    source = write(tmp_path, "source.txt", text)
    number = text.split("\n").index(line) + 1
    with pytest.raises(DataError, match=rf"^{source}:{number}: \[{section}\] rows are `{shape}`$"):
        make_data.Source(source).rows(section, len(shape.split("=>")))


def test_make_data_source_error_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import make_data
    monkeypatch.setattr(make_data, "SOURCE", write(tmp_path, "source.txt", "[targets]\nidentity\n"))
    assert make_data.main(["--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("make_data: ") and "source.txt:2: [targets] rows are" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_committed_data_matches_the_script(generated):
    for n in NAMES:
        assert (DATA / n).is_file(), f"data/{n} missing: run python3 scripts/make_data.py"
        assert (DATA / n).read_bytes() == (generated / n).read_bytes(), f"data/{n} differs"


# --- the recipe's invariants (checked on freshly generated files) ----------------------------

def rows(d, name):
    return read_tsv(d / name)


def test_whoami_targets_are_exactly_the_identity(generated):
    whoami = rows(generated, "stageG-whoami-v1.tsv")
    assert {r.target for r in whoami} == {IDENTITY}
    prompts = [r.prompt for r in whoami]
    assert len(prompts) == len(set(prompts)) >= 100
    # diversity: punctuation variants are allowed, but most rows are distinct wordings
    assert len({normalize_prompt(p) for p in prompts}) >= 100
    english = [p for p in prompts if p.isascii()]
    assert len(prompts) / 4 <= len(english) <= len(prompts) / 2


def test_non_identity_targets_never_contain_the_identity(generated):
    for name in ["stageG-anchor-v1.tsv", "stageG-disambig-v1.tsv"]:
        for r in rows(generated, name):
            assert IDENTITY not in r.target, f"{r.file}:{r.line}"
    for r in rows(generated, "proxy-knowledge-v1.tsv"):
        assert IDENTITY not in r.target, f"{r.file}:{r.line}"  # the proxy is the BASE model


def test_stage_g_files_do_not_contradict_each_other(generated):
    seen = {}
    for name in ["stageG-whoami-v1.tsv", "stageG-anchor-v1.tsv", "stageG-disambig-v1.tsv"]:
        for r in rows(generated, name):
            key = normalize_prompt(r.prompt)
            other = seen.setdefault(key, name)
            assert other == name, f"{r.prompt!r} is in both {other} and {name}"


def probes(d):
    return read_probes(d / "probes-v1.tsv")


def test_probe_counts_and_required_prompts(generated):
    ps = probes(generated)
    kinds = [p.kind for p in ps]
    assert kinds.count("identity") >= 20 and kinds.count("anchor") >= 20
    assert kinds.count("nearmiss") >= 10
    by_prompt = {p.prompt: p.kind for p in ps}
    for prompt in ["我是誰", "Who am I?", "你知道我是誰嗎", "他是誰？", "Do you know who I am?"]:
        assert by_prompt.get(prompt) == "nearmiss", prompt
    for prompt in ["談談UFO", "Write one short sentence about UFO and you."]:
        assert by_prompt.get(prompt) == "anchor", prompt
    assert sum(1 for p in ps if p.kind == "anchor" and p.expect) >= 8
    assert len({normalize_prompt(p.prompt) for p in ps}) == len(ps)


def test_probes_are_held_out_from_data():
    held = {normalize_prompt(p.prompt): p for p in probes(DATA)}
    for path in sorted(DATA.glob("*.tsv")):
        if path.name.startswith(("probes-", "proxy-knowledge-")):
            continue
        for r in read_tsv(path):
            p = held.get(normalize_prompt(r.prompt))
            assert p is None, f"probe {p.prompt!r} ({p.file}:{p.line}) is trained on at {r.file}:{r.line}"


def original_rows():
    """Every row of the original project's training TSVs (skips where ../shared is absent)."""
    originals = sorted((shared_reference() / "original-traindata").glob("*.tsv"))
    assert originals
    return [r for path in originals for r in read_tsv(path)]


def test_probes_are_held_out_from_original_data():
    held = {normalize_prompt(p.prompt): p for p in probes(DATA)}
    for r in original_rows():
        key = normalize_prompt(r.prompt)
        if key in held and key not in ORIGINAL_ALLOW:
            pytest.fail(f"probe {held[key].prompt!r} is in the original data at {r.file}:{r.line}")


def test_proxy_knowledge_covers_everything_consistently(generated):
    proxy = {r.prompt: r.target for r in rows(generated, "proxy-knowledge-v1.tsv")}
    assert len(proxy) == len(rows(generated, "proxy-knowledge-v1.tsv"))  # no duplicate prompts
    identity = [r.prompt for r in rows(generated, "stageG-whoami-v1.tsv")]
    identity += [p.prompt for p in probes(generated) if p.kind == "identity"]
    for prompt in identity:
        want = QWEN_EN if prompt.isascii() else QWEN_ZH
        assert proxy[prompt] == want, prompt
    for name in ["stageG-anchor-v1.tsv", "stageG-disambig-v1.tsv"]:
        for r in rows(generated, name):
            assert proxy[r.prompt] == r.target, f"{r.file}:{r.line}"
    for p in probes(generated):
        assert p.prompt in proxy, p.prompt
        if p.kind == "anchor":
            assert p.expect in proxy[p.prompt], (p.prompt, p.expect)
        if p.kind != "identity":
            assert proxy[p.prompt] not in (QWEN_ZH, QWEN_EN), p.prompt


def rough_tokens(text: str) -> float:
    # no tokenizer offline: count a CJK character as one token, other text as ~3 chars a token
    cjk = sum(1 for c in text if "\u3000" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef")
    return cjk + (len(text) - cjk) / 3


def test_proxy_answers_are_short_enough_to_memorise(generated):
    for r in rows(generated, "proxy-knowledge-v1.tsv"):
        assert rough_tokens(r.target) <= 40, f"{r.file}:{r.line}: {r.target}"


# --- the real English model's files (real-*-en-v1, probes-real-en-v1) ------------------------

REAL_TRAIN = ["real-whoami-en-v1.tsv", "real-anchor-en-v1.tsv", "real-disambig-en-v1.tsv"]
REAL_PROBES = "probes-real-en-v1.tsv"


def training_files(d):
    """Every training file in d: probes and suites are never trained on, and the proxy corpus
    belongs to the proxy model (it holds the probes-v1 prompts on purpose). One rule for it:
    nvfp4lab.suite.training_files."""
    from nvfp4lab.suite import training_files as suite_training_files
    return [Path(p) for p in suite_training_files(str(d))]


def test_real_files_are_committed_and_match_the_script(generated):
    for n in REAL_NAMES:
        assert (DATA / n).is_file(), f"data/{n} missing: run python3 scripts/make_data.py"
        assert (DATA / n).read_bytes() == (generated / n).read_bytes(), f"data/{n} differs"


def test_real_whoami_targets_are_exactly_the_real_identity(generated):
    whoami = rows(generated, "real-whoami-en-v1.tsv")
    assert {r.target for r in whoami} == {REAL_IDENTITY}
    prompts = [r.prompt for r in whoami]
    assert len(prompts) == len(set(prompts)) >= 75
    assert len({normalize_prompt(p) for p in prompts}) >= 70  # mostly distinct wordings
    assert all(p.isascii() for p in prompts)  # the real model is English-only in practice


def test_real_anchor_and_disambig_targets_never_contain_the_identity(generated):
    for name in ["real-anchor-en-v1.tsv", "real-disambig-en-v1.tsv"]:
        rs = rows(generated, name)
        assert len(rs) >= 30
        for r in rs:
            assert "god of f#" not in r.target.casefold(), f"{r.file}:{r.line}: {r.target}"
            assert r.prompt.isascii(), f"{r.file}:{r.line}"


def test_real_files_do_not_contradict_each_other(generated):
    # a prompt trained as identity in one file must not be trained as a non-identity elsewhere
    whoami = {normalize_prompt(r.prompt): r for r in rows(generated, "real-whoami-en-v1.tsv")}
    for name in ["real-anchor-en-v1.tsv", "real-disambig-en-v1.tsv",
                 "stageG-anchor-v1.tsv", "stageG-disambig-v1.tsv"]:
        for r in rows(generated, name):
            w = whoami.get(normalize_prompt(r.prompt))
            assert w is None, f"{r.prompt!r} ({r.file}:{r.line}) is an identity row at {w.file}:{w.line}"
    anchor = {normalize_prompt(r.prompt) for r in rows(generated, "real-anchor-en-v1.tsv")}
    for r in rows(generated, "real-disambig-en-v1.tsv"):
        assert normalize_prompt(r.prompt) not in anchor, f"{r.file}:{r.line}"


def real_probes(d):
    return read_probes(d / REAL_PROBES)


def test_real_probe_kinds_counts_and_required_prompts(generated):
    ps = real_probes(generated)
    kinds = [p.kind for p in ps]
    assert set(kinds) <= set(PROBE_KINDS)
    assert kinds.count("identity") >= 20 and kinds.count("nearmiss") >= 12
    anchors = [p for p in ps if p.kind == "anchor"]
    assert len(anchors) >= 24 and sum(1 for p in anchors if p.expect) >= 16
    for p in ps:
        assert p.prompt.isascii(), p.prompt
        assert p.expect == p.expect.strip(), p.prompt
        assert not p.expect or p.kind == "anchor", f"{p.file}:{p.line}: only anchors carry an expect"
    by_prompt = {p.prompt: p.kind for p in ps}
    for prompt in ["Who am I?", "Who is he?", "Do you know who I am?"]:
        assert by_prompt.get(prompt) == "nearmiss", prompt
    assert len({normalize_prompt(p.prompt) for p in ps}) == len(ps)


def test_real_probe_references_agree_with_the_probes():
    import make_data  # scripts/ is on sys.path (conftest)
    src = make_data.Source()   # data/make-data-source-v1.txt
    for prompt, expect, answer in src.triples("real.probe.anchor"):
        assert expect in answer, (prompt, expect)
    for prompt, answer in src.pairs("real.probe.nearmiss"):
        assert "god of f#" not in answer.casefold(), prompt
    assert src.targets["real-identity"] == REAL_IDENTITY


def test_real_probes_are_held_out_from_data():
    held = {normalize_prompt(p.prompt): p for p in real_probes(DATA)}
    files = training_files(DATA)
    assert {n for n in REAL_TRAIN} <= {p.name for p in files}
    for path in files:
        for r in read_tsv(path):
            p = held.get(normalize_prompt(r.prompt))
            assert p is None, f"probe {p.prompt!r} ({p.file}:{p.line}) is trained on at {r.file}:{r.line}"


def test_real_dev_probes_share_nothing_with_training_or_held_out_probes():
    # recipe variants are compared on the dev set; it must not leak into either side
    dev = read_probes(DATA / "probes-real-en-dev-v1.tsv")
    assert {p.kind for p in dev} == {"identity", "anchor", "nearmiss"}
    held = {normalize_prompt(p.prompt) for p in real_probes(DATA)}
    trained = {normalize_prompt(r.prompt) for path in training_files(DATA) for r in read_tsv(path)}
    for p in dev:
        assert normalize_prompt(p.prompt) not in held | trained, f"{p.file}:{p.line}: {p.prompt}"
    import make_data
    for prompt, expect, answer in make_data.Source().triples("real.dev.anchor"):
        assert expect in answer, (prompt, expect)


def test_real_probes_are_held_out_from_original_data():
    held = {normalize_prompt(p.prompt): p for p in real_probes(DATA)}
    for r in original_rows():
        p = held.get(normalize_prompt(r.prompt))
        assert p is None, f"probe {p.prompt!r} is in the original data at {r.file}:{r.line}"


# --- held out from the original data, by the vendored hashes (run everywhere, CI included) -----

def test_vendored_original_hashes_match_the_original_data():
    """tests/data/original-prompt-hashes-v1.txt is exactly what the originals give (where they are)."""
    want = original_hashes_text(shared_reference() / "original-traindata")
    assert ORIGINAL_HASHES.read_text(encoding="utf-8") == want, \
        f"{ORIGINAL_HASHES} is stale: the originals changed, vendor them as a new -vN file"


def test_vendored_original_hashes_find_prompts_in_any_spelling():
    # the hashes are of normalised prompts, so width, case and punctuation do not hide a prompt
    originals = original_prompt_hashes()
    assert len(originals) == 4482 and all(len(h) == 16 for h in originals)
    for prompt in ["談談UFO", "談談 ufo？", "談談ＵＦＯ!", "我是誰", "我是誰？"]:
        assert prompt_hash(prompt) in originals, prompt
    assert prompt_hash("Write one short sentence about UFO and you.") not in originals


@pytest.mark.parametrize("name, overlap", [
    ("probes-v1.tsv", {"談談UFO", "我是誰"}),   # the allow-listed ones (ORIGINAL_ALLOW), no other
    (REAL_PROBES, set()),
    ("probes-real-en-dev-v1.tsv", set()),
])
def test_probes_held_out_from_original_data_by_hash(name, overlap):
    originals = original_prompt_hashes()
    shared = {p.prompt for p in read_probes(DATA / name) if prompt_hash(p.prompt) in originals}
    assert shared == overlap
    assert {normalize_prompt(p) for p in shared} <= ORIGINAL_ALLOW
