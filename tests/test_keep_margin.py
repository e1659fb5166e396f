"""--keep-margin-weight: a hinge on the KL positions that keeps the base's greedy token ahead of
the model's best other token, by as much as the base had it (up to --keep-margin nats)."""
import json

import pytest
import torch

import train   # scripts/ is on sys.path (conftest)
from conftest import steps_on_batch, tiny_train_files
from nvfp4lab import paths, trainer

TARGET = "我是 F# 之神"
REPLAY = {"1+1等於多少？": "1+1等於2。", "天空是什麼顏色？": "天空是藍色的。", "What is 2 plus 2?": "2 plus 2 is 4.",
          "Name a fruit.": "An apple is a fruit.", "Who am I?": "You are the user."}
ROWS = [("你是誰", TARGET, "target"), ("你叫什麼名字", TARGET, "target")] + [(p, "-", "anchor") for p in REPLAY]


def test_the_hinge_is_the_lost_share_of_the_bases_margin():
    """Three positions over a 3-token vocabulary: the base prefers token 0 by 1 nat (logits 2, 1,
    0) everywhere; the model ties it (margin 0: hinge 1), flips it (-0.5: hinge 1.5), holds it
    (3: hinge 0). With the cap at 0.5 a base margin of 1 is held only down to 0.5."""
    base = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]] * 3), -1)
    model = torch.log_softmax(torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.5, 0.0], [3.0, 0.0, 0.0]]), -1)
    assert float(trainer.greedy_margin_hinge(model, base, 1.0)) == pytest.approx((1 + 1.5 + 0) / 3)
    assert float(trainer.greedy_margin_hinge(model, base, 0.5)) == pytest.approx((0.5 + 1.0 + 0) / 3)
    assert float(trainer.greedy_margin_hinge(base, base, 1.0)) == 0.0   # the base itself: nothing


def test_batch_loss_adds_the_weighted_hinge_and_nothing_at_the_base(tiny_qwen):
    """At the base (no step taken) the model's margins are the base's: the term is 0. After steps
    on the identity rows it is weight x the hinge of the KL positions, on top of the same CE/KL."""
    model, tok = steps_on_batch(tiny_qwen, make_batch, 0)
    batch, keep, _ = make_batch(tok)
    with torch.no_grad():
        plain = trainer.batch_loss(model, batch, keep, 1.0)
        held = trainer.batch_loss(model, batch, keep, 1.0, keep_margin_weight=2.0)
    assert torch.allclose(held[0], plain[0])
    torch.manual_seed(0)
    moved, _ = steps_on_batch(tiny_qwen, make_batch, 10)
    with torch.no_grad():
        plain = trainer.batch_loss(moved, batch, keep, 1.0)
        held = trainer.batch_loss(moved, batch, keep, 1.0, keep_margin_weight=2.0, keep_margin=0.5)
        pos = trainer.kl_positions(batch, keep, batch["labels"][:, 1:] != -100)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logp = torch.log_softmax(moved(input_ids=ids, attention_mask=mask).logits[:, :-1][pos].float(), -1)
        with trainer.deltas_off(moved):
            base_logp = torch.log_softmax(moved(input_ids=ids, attention_mask=mask).logits[:, :-1][pos].float(), -1)
    hinge = trainer.greedy_margin_hinge(logp, base_logp, 0.5)
    assert float(hinge) > 0
    assert float(held[0] - plain[0]) == pytest.approx(2.0 * float(hinge), rel=1e-4)
    assert float(held[4]) == pytest.approx(float(hinge)) and float(plain[4]) == 0.0
    assert [float(x) for x in held[1:4]] == pytest.approx([float(x) for x in plain[1:4]])


def make_batch(tok):
    return trainer.encode_batch(tok, ROWS, 64, REPLAY, torch.device("cpu"))


def flipped(model, base, tok) -> tuple[int, int]:
    """(KL positions of the anchor rows where the model's greedy token is not the base's, all)."""
    batch, keep, _ = make_batch(tok)
    pos = (batch["labels"][:, 1:] != -100) & keep[:, None]
    with torch.no_grad():
        def greedy(m):
            return m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][pos].argmax(-1)
        return int((greedy(model) != greedy(base)).sum()), int(pos.sum())


def target_ce(model, tok) -> float:
    batch, keep, _ = trainer.encode_batch(tok, ROWS[:1], 64, {}, torch.device("cpu"))
    with torch.no_grad():
        return float(trainer.batch_loss(model, batch, keep, 0.0)[1])


def test_the_hinge_keeps_the_anchors_greedy_tokens_while_the_identity_is_learnt(tiny_qwen):
    """40 steps (LR 3e-3) on 2 identity rows and 5 anchor rows with KL weight 1: the tiny random
    model's distributions are nearly flat, so the KL lets every one of the anchors' 37 greedy
    tokens flip (measured 37/37); the hinge at weight 1 keeps all but a few (measured 5/37) while
    the identity answer is still learnt (CE 0.71 without, 0.99 with, from 11.9 at the base)."""
    base, tok = steps_on_batch(tiny_qwen, make_batch, 0)
    torch.manual_seed(0)
    kl_only, _ = steps_on_batch(tiny_qwen, make_batch, 40)
    torch.manual_seed(0)
    held, _ = steps_on_batch(tiny_qwen, make_batch, 40, keep_margin_weight=1.0)
    (n_kl, n), (n_held, _) = flipped(kl_only, base, tok), flipped(held, base, tok)
    assert n_kl >= 0.8 * n and n_held <= 0.25 * n
    assert target_ce(held, tok) < 1.5 < 0.15 * target_ce(base, tok)


def test_the_flag_needs_the_kl(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--mix", "a.tsv:1:anchor", "--keep-margin-weight", "1"])
    assert e.value.code == 2 and "--keep-margin-weight" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.parse_args(["--mix", "a.tsv:1:anchor", "--kl-weight", "1", "--keep-margin", "0"])
    cfg = train.parse_args(["--mix", "a.tsv:1:anchor", "--kl-weight", "1", "--keep-margin-weight", "1"])
    assert (cfg.keep_margin_weight, cfg.keep_margin) == (1.0, 1.0)


def test_a_run_hands_the_flags_to_every_step(tiny_qwen, tmp_path, monkeypatch, capsys):
    """train.py end to end (tiny Qwen3, 2 steps): each step's loss gets the hinge's weight and cap
    (and --head-chunk-mib's positions: its default, one piece), and the step log shows the hinge."""
    model_dir, dat = tiny_qwen
    who, anchor, probes = tiny_train_files(tmp_path, "Who are you?\tI am the God of F#.\n",
                                           "What is 2 plus 2?\t2 plus 2 is 4.\n",
                                           "identity\tWhat is your name?\nnearmiss\tWho am I?\n")
    seen = []
    loss = trainer.batch_loss
    monkeypatch.setattr(trainer, "batch_loss", lambda *a: seen.append(a[7:]) or loss(*a))
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    code = train.main([str(a) for a in (
        "--input-dat", dat, "--model-dir", model_dir, "--output-dat", tmp_path / "out.dat",
        "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", probes, "--steps", "2",
        "--step-chunk-rows", "2", "--seq-len", "48", "--probe-max-tokens", "4",
        "--test-max-tokens", "4", "--device", "cpu", "--max-retries", "0", "--kl-weight", "1",
        "--keep-margin-weight", "0.5", "--keep-margin", "2")])
    assert code in (0, 3)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    assert seen == [(0.5, 2.0, trainer.head_chunk_positions(0, vocab))] * 2
    last = [line for line in capsys.readouterr().out.splitlines() if "step 2/2 loss" in line]
    assert len(last) == 1 and " margin " in last[0]
