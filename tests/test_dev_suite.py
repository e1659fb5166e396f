"""data/suite-en-dev-v2.tsv (scripts/make_dev_suite.py): dev v1 plus greeting-like near misses
that no other data file holds."""
import json

import pytest

import make_dev_suite
from conftest import ROOT
from nvfp4lab.evaluate import is_greeting
from nvfp4lab.suite import read_suite
from nvfp4lab.tsv import DataError, normalize_prompt, render_tsv

DATA = ROOT / "data"


def test_committed_dev_v2_is_the_generator_output_and_v1_plus_the_greetings():
    rows, header = make_dev_suite.build()
    assert (DATA / make_dev_suite.NAME).read_bytes() == render_tsv(rows, header, make_dev_suite.NAME)
    v1, v2 = read_suite(DATA / "suite-en-dev-v1.tsv"), read_suite(DATA / make_dev_suite.NAME)
    key = lambda r: (r.kind, r.group, r.prompt, r.expect, json.dumps(r.context))  # noqa: E731
    old = {key(r) for r in v1}
    assert [key(r) for r in v2 if key(r) in old] == [key(r) for r in v1]   # all of v1, in order
    added = [r for r in v2 if key(r) not in old]
    assert len(added) == 40 and all(r.kind == "nearmiss" and is_greeting(r) for r in added)
    assert sum(is_greeting(r) for r in v2) == sum(is_greeting(r) for r in v1) + 40


def test_the_added_greetings_are_in_no_other_data_file():
    added = {normalize_prompt(r.prompt) for r in read_suite(DATA / make_dev_suite.NAME)} - \
        {normalize_prompt(r.prompt) for r in read_suite(DATA / "suite-en-dev-v1.tsv")}
    assert len(added) == 40
    others = make_dev_suite.known_prompts(DATA)
    assert not added & others


def test_a_colliding_line_is_one_error_naming_it(tmp_path):
    heldout = read_suite(DATA / "suite-en-heldout-v1.tsv")[0].prompt
    for body, line in ((f"# c\nHello there, new friend!\n{heldout.upper()}\n", 3),
                       ("Pleased to see you!\n# c\npleased to see you\n", 3)):
        src = tmp_path / "greet.txt"
        src.write_text(body, encoding="utf-8")
        with pytest.raises(DataError, match=f"^{src}:{line}: "):
            make_dev_suite.greeting_rows(src, make_dev_suite.known_prompts(DATA))


def test_make_dev_suite_writes_a_new_file_only(tmp_path, capsys):
    assert make_dev_suite.main(["--out-dir", str(tmp_path)]) == 0
    assert make_dev_suite.main(["--out-dir", str(tmp_path)]) == 0       # a re-run is a no-op
    assert "exists-same" in capsys.readouterr().out
    (tmp_path / make_dev_suite.NAME).write_text("changed\n", encoding="utf-8")
    assert make_dev_suite.main(["--out-dir", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
