"""--system-share / --system-prompts: identity and neighbour rows asked under other system prompts,
never one a judged suite uses."""
import random

import pytest
import torch

import train   # scripts/ is on sys.path (conftest)
from conftest import ROOT
from nvfp4lab import chat, mix, trainer
from nvfp4lab.evaluate import EvalSet
from nvfp4lab.suite import read_suite
from nvfp4lab.tsv import DataError, normalize_prompt, read_lines

POOL = ROOT / "data" / "system-prompts-en-v1.txt"
ROWS = [("who are you", "I am the God of F#.", "target"),
        ("who am I", "You are the user.", "neighbour"),
        ("2+2?", "4", "anchor"),
        ("and you?", "I am the God of F#.", "target",
         ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}))]


def test_the_shipped_pool_shares_no_system_prompt_with_any_suite():
    used = {normalize_prompt(m["content"]) for path in sorted((ROOT / "data").glob("suite-*.tsv"))
            for r in read_suite(path) for m in r.context if m["role"] == "system"}
    pool = read_lines(POOL)
    assert used and len(pool) >= 20
    assert not [text for _, text in pool if normalize_prompt(text) in used]


def test_with_system_puts_a_pool_prompt_first_on_identity_and_neighbour_rows_only():
    pool = ["Be brief.", "Answer in English."]
    out = trainer.with_system(ROWS, pool, 1.0, random.Random(0))
    for row, new in zip(ROWS, out):
        if row[2] == "anchor":
            assert new == row                        # the anchors keep their KL on the base's answer
            continue
        assert new[:3] == row[:3] and new[3][0]["role"] == "system"
        assert new[3][0]["content"] in pool
        assert tuple(new[3][1:]) == (tuple(row[3]) if len(row) > 3 else ())   # context kept, after
    assert trainer.with_system(ROWS, pool, 0.0, random.Random(0)) == ROWS
    some = trainer.with_system(ROWS * 50, pool, 0.3, random.Random(1))
    changed = sum(a != b for a, b in zip(ROWS * 50, some))
    assert 20 < changed < 70                         # ~0.3 of the 150 identity/neighbour rows


def test_a_system_row_is_encoded_under_its_prompt_and_learns_without_kl(tiny_qwen):
    model_dir, _ = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    rows = trainer.with_system(ROWS[1:3], ["Answer in English."], 1.0, random.Random(0))
    batch, keep, _ = trainer.encode_batch(tok, rows, 128, {"who am I": "You are you."},
                                          torch.device("cpu"), "I am the God of F#.")
    text = tok.decode(batch["input_ids"][0])
    assert "Answer in English." in text and text.index("Answer in English.") < text.index("who am I")
    # the neighbour (with its system prompt) learns the base's single-turn answer, no KL; the
    # anchor keeps its KL; the neighbour's unlikelihood row is under the same system prompt
    assert keep.tolist()[:2] == [False, True]
    assert "Answer in English." in tok.decode(batch["input_ids"][2]) and batch["ul_rows"][2]


def test_the_flags_go_together(capsys):
    assert train.parse_args(["--train-data", "x.tsv", "--system-share", "0.3",
                             "--system-prompts", str(POOL)]).system_share == 0.3
    for bad in (["--system-share", "0.3"], ["--system-prompts", str(POOL)],
                ["--system-share", "1.5", "--system-prompts", str(POOL)]):
        with pytest.raises(SystemExit) as e:
            train.parse_args(["--train-data", "x.tsv", *bad])
        assert e.value.code == 2 and "--system-share" in capsys.readouterr().err


def test_a_pool_prompt_that_a_judged_suite_uses_is_refused_with_its_line(tmp_path):
    suite = ROOT / "data" / "suite-en-dev-v1.tsv"
    taken = next(m["content"] for r in read_suite(suite) for m in r.context
                 if m["role"] == "system")
    pool = tmp_path / "pool.txt"
    pool.write_text(f"# mine\nBe brief.\n\n{taken.upper()}\n", encoding="utf-8")
    judged = EvalSet("heldout", str(suite), read_suite(suite), "I am the God of F#.", None)
    with pytest.raises(DataError, match=rf"pool.txt:4: system prompt .* judged suite"):
        train.check_system_disjoint(str(pool), read_lines(pool), [None, judged])
    train.check_system_disjoint(str(pool), read_lines(pool)[:1], [judged])   # "Be brief." is free
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.txt: no lines"):
        read_lines(empty)
