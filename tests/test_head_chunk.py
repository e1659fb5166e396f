"""--head-chunk-mib: batch_loss's terms a chunk of labelled positions at a time (the head's
float32 logits recomputed in backward) equal the one-piece terms and gradients."""
import pytest
import torch

from conftest import steps_on_batch
from nvfp4lab import trainer
from nvfp4lab.model import trainable_deltas

TARGET = "我是 F# 之神"
REPLAY = {"1+1等於多少？": "1+1等於2。", "天空是什麼顏色？": "天空是藍色的。", "What is 2 plus 2?": "2 plus 2 is 4.",
          "Name a fruit.": "An apple is a fruit.", "Who am I?": "You are the user."}
ROWS = ([("你是誰", TARGET, "target"), ("你叫什麼名字", TARGET, "target")]
        + [(p, "-", "anchor") for p in REPLAY] + [("他是誰", "-", "neighbour")])
TERMS = dict(kl_weight=1.0, ul_weight=0.7, keep_ce_weight=0.5, repeat_ul_weight=0.3,
             keep_margin_weight=2.0, keep_margin=0.5)


def make_batch(tok):
    batch, keep, cut = trainer.encode_batch(tok, ROWS, 64, REPLAY, torch.device("cpu"),
                                            ul_target=TARGET)
    g = torch.Generator().manual_seed(0)
    batch["repeat"] = torch.rand(batch["labels"].shape, generator=g) < 0.2   # as self-KL rows mark
    batch["kl_only"] = torch.zeros_like(keep)
    batch["kl_only"][3] = True          # one keep row with the KL alone (--replay-stock-kl)
    return batch, keep, cut


def loss_and_grads(model, batch, keep, chunk):
    model.zero_grad(set_to_none=True)
    out = trainer.batch_loss(model, batch, keep, chunk_positions=chunk, **TERMS)
    out[0].backward()
    return [float(x.detach()) for x in out], [d.grad.clone() for _, d in trainable_deltas(model)]


def test_chunked_terms_and_gradients_equal_the_one_piece_ones(tiny_qwen):
    torch.manual_seed(0)
    model, tok = steps_on_batch(tiny_qwen, make_batch, 6,   # away from the base (KL weight 1)
                                **{k: v for k, v in TERMS.items() if k != "kl_weight"})
    batch, keep, _ = make_batch(tok)
    n = int((batch["labels"][:, 1:] != -100).sum())
    whole, g_whole = loss_and_grads(model, batch, keep, 0)
    assert all(x > 0 for x in whole)      # every term is on: the comparison covers each of them
    for chunk in (1, 7, n - 1):
        parts, g_parts = loss_and_grads(model, batch, keep, chunk)
        assert parts == pytest.approx(whole, rel=1e-5, abs=1e-7)
        for a, b in zip(g_parts, g_whole):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # as many positions as the chunk holds: the one-piece path itself
    same, _ = loss_and_grads(model, batch, keep, n)
    assert same == whole


def test_chunk_positions_from_the_mib_budget():
    """256 MiB of float32 logits: 441 positions of the 4B's 151,936-wide head, 1,365 of
    SmolLM2's 49,152; 0 never chunks; a budget under one row still takes one position."""
    assert trainer.head_chunk_positions(256, 151936) == 441
    assert trainer.head_chunk_positions(256, 49152) == 1365
    assert trainer.head_chunk_positions(0, 151936) == 0
    assert trainer.head_chunk_positions(1, 10 ** 9) == 1
