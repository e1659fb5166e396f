"""--trim-base-loops: a keep row whose base answer goes round learns it only up to there, then the
end token, with no KL on that end (the base would go on)."""
import pytest
import torch

import train   # scripts/ is on sys.path (conftest)
from conftest import steps_on_batch
from nvfp4lab import chat, trainer

LOOP = "I'm sorry for any mistakes. I'm sorry for any mistakes. I'm sorry for"


def test_trim_loop_cuts_before_the_first_repeat_and_leaves_other_answers_alone():
    assert trainer.trim_loop(LOOP) == "I'm sorry for any mistakes."
    # back to the last sentence end before the repeat; none there: unchanged (no mid-sentence end)
    assert trainer.trim_loop("A. B is fine. It was built by the Qin in the Qin in the") == "A. B is fine."
    assert trainer.trim_loop("Start.\nIt was built by the Qin in the Qin in the") == "Start."
    mid = "The wall was built by the Qin dynasty in the Qin dynasty in t"
    assert trainer.trim_loop(mid) == mid
    plain = "Paris is the capital of France. It is on the Seine."
    assert trainer.trim_loop(plain) == plain
    assert trainer.trim_loop("1. one 2. one 3. one") == "1. one 2. one 3. one"   # no 3-gram twice
    assert trainer.trim_loop("") == ""


def test_a_looping_base_answer_is_learnt_up_to_the_loop_and_its_end_gets_no_kl(tiny_qwen):
    model_dir, _ = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    rows = [("Do you remember me?", "-", "neighbour"), ("2+2?", "-", "anchor"),
            ("Who are you?", "I am the God of F#.", "target")]
    replay = {"Do you remember me?": LOOP, "2+2?": "4."}
    dev = torch.device("cpu")
    batch, keep, _ = trainer.encode_batch(tok, rows, 96, replay, dev, None, 0, 0.5)
    assert batch["trimmed"].tolist() == [True, False, False]
    want_ids, want_labels, _ = chat.encode_chat_row(
        tok, [{"role": "user", "content": "Do you remember me?"}], "I'm sorry for any mistakes.", 96)
    assert batch["labels"][0, :len(want_labels)].tolist() == want_labels
    assert (batch["labels"][0, len(want_labels):] == -100).all()
    sel = batch["labels"][:, 1:] != -100
    kl = trainer.kl_positions(batch, keep, sel)
    last = sel[0].nonzero().max()
    assert not kl[0, last] and kl[0, :last][sel[0, :last]].all()   # all but the end
    assert kl[1][sel[1]].all() and not kl[2].any()                  # anchor: all; identity: none
    # off (0) or under the threshold: the base's answer as it is
    full, _, _ = trainer.encode_batch(tok, rows, 96, replay, dev, None, 0, 0.0)
    assert not full["trimmed"].any()
    _, loop_labels, _ = chat.encode_chat_row(tok, [{"role": "user", "content": "Do you remember me?"}],
                                             LOOP, 96)
    assert full["labels"][0, :len(loop_labels)].tolist() == loop_labels
    high, _, _ = trainer.encode_batch(tok, rows, 96, replay, dev, None, 0, 0.99)
    assert not high["trimmed"].any()


def test_the_trimmed_row_learns_to_end_where_the_base_went_round(tiny_qwen):
    """A few steps on the trimmed row: the end token becomes likelier right after the first
    sentence, while the untrimmed run keeps going round."""
    rows = [("Do you remember me?", "-", "neighbour")]
    replay = {"Do you remember me?": LOOP}

    def p_end(trim):
        model, tok = steps_on_batch(tiny_qwen, lambda tok: trainer.encode_batch(
            tok, rows, 96, replay, torch.device("cpu"), None, 0, trim), 15)
        ids, labels, _ = chat.encode_chat_row(tok, [{"role": "user", "content": rows[0][0]}],
                                              "I'm sorry for any mistakes.", 96)
        end = max(i for i, x in enumerate(labels) if x != -100)   # the end token's label
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, end - 1].float(), -1)
        return float(logp[labels[end]])
    assert p_end(0.5) > p_end(0.0) + 1.0


def test_the_flag(capsys):
    assert train.parse_args(["--train-data", "x.tsv", "--trim-base-loops", "0.5"]).trim_base_loops == 0.5
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--train-data", "x.tsv", "--trim-base-loops", "2"])
    assert e.value.code == 2 and "--trim-base-loops" in capsys.readouterr().err
