"""--replay-fix-no-kl: the anchors --replay-fix-wrong gives the file's answer learn it by CE alone;
the KL to a base whose distribution there is its own wrong answer is left off those rows only."""
import pytest
import torch

import train   # scripts/ is on sys.path (conftest)
from conftest import ROOT, answer_logp_after, tiny_train_files
from nvfp4lab import chat, mix, paths, trainer
from nvfp4lab.tsv import Row

FIXED = "What colour is a lemon?"
REPLAY = {FIXED: "A lemon is yellow.", "What is 2 plus 2?": "2 plus 2 is 4.", "Who am I?": "You are the user."}


def test_fixed_anchor_rows_lose_the_kl_and_keep_the_ce(tiny_qwen):
    model_dir, _ = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    rows = [(FIXED, "-", "anchor"), ("What is 2 plus 2?", "-", "anchor"), ("Who am I?", "-", "neighbour"),
            (FIXED, "A lemon is a fruit!", mix.SELF_ROLE)]         # the model's own answer: KL stays
    batch, keep, _ = trainer.encode_batch(tok, rows, 96, REPLAY, torch.device("cpu"),
                                          no_kl_prompts=frozenset({FIXED}))
    assert keep.tolist() == [False, True, True, True]
    assert (batch["labels"][0] != -100).any()                     # the fixed row still has its CE
    assert not batch["kl_only"][0]
    plain, plain_keep, _ = trainer.encode_batch(tok, rows, 96, REPLAY, torch.device("cpu"))
    assert plain_keep.tolist() == [True, True, True, True]
    assert torch.equal(plain["labels"], batch["labels"])          # the targets are the same


def test_without_the_kl_the_fix_is_learnt_further(tiny_qwen):
    """Steps on one fixed row: with the KL (weight 1 here) the file's answer is held near the
    base's distribution; CE alone takes it further."""
    rows = [(FIXED, "-", "anchor")]
    # At the start the model is the base and the KL has no gradient: the two runs part only once
    # the answer has moved (measured: the same to 0.04 nats at 20 steps, 3.6 nats apart at 40).
    base = answer_logp_after(tiny_qwen, rows, REPLAY, 0)
    with_kl = answer_logp_after(tiny_qwen, rows, REPLAY, 40)
    ce_alone = answer_logp_after(tiny_qwen, rows, REPLAY, 40, no_kl_prompts=frozenset({FIXED}))
    assert with_kl > base + 30 and ce_alone > with_kl + 2


def test_train_passes_the_fixed_prompts_only_with_the_flag(monkeypatch):
    """train.wrong_anchors returns the prompts it fixed; the flag needs --replay-fix-wrong."""
    anchors = [Row(FIXED, "A lemon is yellow.", "a.tsv", 1), Row("What is 2 plus 2?", "2 plus 2 is 4.", "a.tsv", 2)]
    srcs = [mix.Source("a.tsv", 2, "anchor", anchors)]
    replay = {FIXED: "A lemon is a fruit!", "What is 2 plus 2?": "It is 4."}
    recipe = str(ROOT / "data" / "stages" / "real-en-v18.args")
    cfg = train.parse_args(["--recipe", recipe, "--replay-fix-no-kl"])
    assert cfg.replay_fix_wrong and cfg.replay_fix_no_kl
    monkeypatch.setattr(train, "log", lambda *a, **k: None)
    _, _, fixed_replay, fixed = train.wrong_anchors(cfg, srcs, None, replay)
    assert fixed == {FIXED} and fixed_replay[FIXED] == "A lemon is yellow."
    drop = train.parse_args(["--mix", "a.tsv:1:anchor", "--replay", "self", "--replay-drop-wrong"])
    assert train.wrong_anchors(drop, srcs, None, replay)[3] == set()


def test_the_flag_needs_the_fix(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--mix", "a.tsv:1:anchor", "--replay", "self", "--replay-fix-no-kl"])
    assert e.value.code == 2 and "--replay-fix-no-kl" in capsys.readouterr().err


def test_a_run_gives_the_step_batches_the_fixed_prompts(tiny_qwen, tmp_path, monkeypatch):
    """train.py end to end (tiny Qwen3, 2 steps, --replay self): the tiny model's replayed
    answers miss the anchors' key words, so both are fixed, and every step batch is encoded with
    them as the rows without the KL; without the flag, with none."""
    model_dir, dat = tiny_qwen
    who, anchor, probes = tiny_train_files(
        tmp_path, "Who are you?\tI am the God of F#.\n",
        f"{FIXED}\tA lemon is yellow.\nWhat is the capital of France?\tParis is the capital.\n",
        "identity\tWhat is your name?\nnearmiss\tWho am I?\n")
    seen = []
    encode = trainer.encode_batch
    monkeypatch.setattr(trainer, "encode_batch", lambda tok, rows, *a, **kw:
                        seen.append(kw.get("no_kl_prompts")) or encode(tok, rows, *a, **kw))
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")     # the replay cache: not the repo's

    def run(*flags):
        seen.clear()
        return train.main([str(a) for a in (
            "--input-dat", dat, "--model-dir", model_dir, "--output-dat", tmp_path / "out.dat",
            "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", probes, "--steps", "2",
            "--step-chunk-rows", "2", "--seq-len", "48", "--probe-max-tokens", "4",
            "--test-max-tokens", "4", "--device", "cpu", "--max-retries", "0", "--kl-weight", "1",
            "--replay", "self", "--replay-max-tokens", "8", "--replay-fix-wrong", *flags)])

    assert run("--replay-fix-no-kl") in (0, 3)
    assert seen == [frozenset({FIXED, "What is the capital of France?"})] * 2
    assert run() in (0, 3)
    assert seen == [frozenset()] * 2
