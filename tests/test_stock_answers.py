"""--replay-stock-kl: keep rows whose replayed base answer is a stock one, shared by many prompts
("I'm sorry for any mistakes."), get the KL to the base alone, so CE does not sharpen it into
the edit's default answer."""
import pytest
import torch

import train   # scripts/ is on sys.path (conftest)
from conftest import answer_logp_after
from nvfp4lab import chat, trainer

STOCK = "I'm sorry for any mistakes."
REPLAY = {"Hi!": STOCK, "Shalom!": "i'm  SORRY for any mistakes.", "Who's that?": STOCK,
          "2+2?": "4.", "Capital of France?": "Paris."}


def test_stock_prompts_are_those_sharing_one_answer_case_and_spacing_aside():
    prompts = set(REPLAY) | {"not replayed"}
    assert trainer.stock_answer_prompts(REPLAY, prompts, 3) == {"Hi!", "Shalom!", "Who's that?"}
    assert trainer.stock_answer_prompts(REPLAY, prompts, 4) == frozenset()
    assert trainer.stock_answer_prompts(REPLAY, prompts, 0) == frozenset()     # off
    # only the prompts given count (the keep rows of the attempt's sources)
    assert trainer.stock_answer_prompts(REPLAY, {"Hi!", "Shalom!", "2+2?"}, 3) == frozenset()


def test_stock_rows_get_the_kl_and_no_ce_others_keep_both(tiny_qwen):
    model_dir, _ = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    ctx = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am the God of F#."}]
    rows = [("Hi!", "-", "neighbour"), ("2+2?", "-", "anchor"), ("Who are you?", "I am the God of F#.", "target"),
            ("Who's that?", "-", "neighbour", ctx)]
    stock = trainer.stock_answer_prompts(REPLAY, set(REPLAY), 3)
    batch, keep, _ = trainer.encode_batch(tok, rows, 96, REPLAY, torch.device("cpu"), kl_only_prompts=stock)
    assert batch["kl_only"].tolist() == [True, False, False, False]   # in context: CE, no KL
    assert keep.tolist() == [True, True, False, False]
    plain, _, _ = trainer.encode_batch(tok, rows, 96, REPLAY, torch.device("cpu"))
    assert not plain["kl_only"].any()


def test_a_stock_answer_is_not_taught(tiny_qwen):
    """Steps on one stock row: with CE its answer becomes likelier; as KL alone the model starts
    at the base, so its answer stays about as likely as it was."""
    rows = [("Hi!", "-", "neighbour")]
    base = answer_logp_after(tiny_qwen, rows, REPLAY, 0)
    taught = answer_logp_after(tiny_qwen, rows, REPLAY, 10) - base
    kept = answer_logp_after(tiny_qwen, rows, REPLAY, 10, kl_only_prompts=frozenset({"Hi!"})) - base
    assert taught > 1.0
    # Not exactly 0: at the base the KL's gradient is float noise, and AdamW divides every element
    # by its own RMS, so noise still takes LR-sized steps in no particular direction. What the
    # flag promises is that the answer is not pushed up: a tenth of what CE does, at most.
    assert abs(kept) < 0.1 * taught


def test_stock_kl_needs_the_replay(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--mix", "a.tsv:1", "--replay-stock-kl", "4"])
    assert e.value.code == 2 and "--replay-stock-kl 4" in capsys.readouterr().err
    assert train.parse_args(["--mix", "a.tsv:1", "--replay", "self", "--replay-stock-kl", "4"]).replay_stock_kl == 4
