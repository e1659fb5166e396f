"""Batched greedy answers (suites, probes, replay, self-test, --self-kl-rows) through
batch_decode.BatchDecoder, and answer scoring. The runners' turn-by-turn generation with timing
lives in runner_generate.py.

Why batches: a suite is hundreds of independent chats, and a decode step of a small model is
launch-bound, so a left-padded batch of 64 costs little more per step than one chat: ~350 chats
of 32 tokens are 6 batches x 32 steps instead of 350 x 32. Chats are sorted by length first so
a batch pads little. Why not `transformers.generate`: batch_decode.py says.
"""
import torch

from .batch_decode import BatchDecoder
from .chat import collate, encode_answer, encode_chat, end_tokens, pad_token_id
from .decode import round_up
from .model import cached_weights


def default_batch_size(device) -> int:
    """Chats per generate call: 64 on a GPU (4B shape: ~3 GiB of KV cache for 64 x 350 tokens,
    inside the training run's memory goal), 16 on the CPU where a bigger batch gains nothing."""
    return 64 if torch.device(device).type == "cuda" else 16


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def greedy_chats(model, tok, chats: list[list[dict]], max_new_tokens: int,
                 batch_size: int | None = None) -> list[str]:
    """Greedy answers to chats (role/content messages ending with a user turn), in input order.

    Batched with left padding; the answer is cut at the first stop token and decoded without
    special tokens.
    """
    return [tok.decode(ids, skip_special_tokens=True)
            for ids in greedy_chat_ids(model, tok, chats, max_new_tokens, batch_size)]


def greedy_chat_ids(model, tok, chats: list[list[dict]], max_new_tokens: int,
                    batch_size: int | None = None) -> list[list[int]]:
    """greedy_chats' answers as the token ids generated, before the first stop token (for
    measuring the model on its own tokens: decoded text can re-encode into other tokens)."""
    if not chats:
        return []
    dev = model_device(model)
    batch_size = batch_size or default_batch_size(dev)
    end = end_tokens(tok)
    enc = [encode_chat(tok, c) for c in chats]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out: list[list[int] | None] = [None] * len(enc)
    # On CUDA a short last batch runs in the spare rows of the decoder before it (its captured
    # graph is what reuse saves); on the CPU a spare row is pure cost, so each batch has its own.
    full = min(batch_size, len(order))
    dec = None
    # One forward per new token: the unpacked weights are built once for all batches
    # (model.cached_weights) and dropped on return, so a decoder, and the CUDA graph it
    # captured around those weights, serves the following batches of this call while their
    # capacity stays the same. Batches go shortest first, so capacities only grow and one
    # decoder (one KV cache) is alive at a time.
    with torch.no_grad(), cached_weights(model):
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            seqs = [enc[j] for j in idx]
            # Capacity in steps of 64: the attention mask's last dimension stays aligned for the
            # fused SDPA kernels, and the extra columns are masked (no effect on the answers).
            capacity = round_up(max(map(len, seqs)) + max_new_tokens, 64)
            rows = full if dev.type == "cuda" else len(idx)
            if dec is None or dec.capacity != capacity or dec.rows != rows:
                dec = None                 # free the old cache before the new one is made
                dec = BatchDecoder(model, rows, capacity)
            new = dec.greedy(seqs, max_new_tokens, end.stops, end.pad)
            for j, ids in zip(idx, new):
                out[j] = end.cut(ids)
    return out


def greedy_answers(model, tok, prompts: list[str], max_new_tokens: int,
                   batch_size: int | None = None) -> list[str]:
    """Greedy answers to single-turn prompts (probes, replay, self-test)."""
    return greedy_chats(model, tok, [[{"role": "user", "content": p}] for p in prompts],
                        max_new_tokens, batch_size)


def answer_batches(tok, chats: list[list[dict]], answers: list[str], batch_size: int, device):
    """(row indices, right-padded batch of chat + answer + end token) for scoring answers."""
    enc = [encode_answer(tok, c, a) for c, a in zip(chats, answers)]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i][0]))
    pad = pad_token_id(tok)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        yield idx, {k: v.to(device) for k, v in collate([enc[j] for j in idx], pad).items()}


@torch.no_grad()
def answer_log_probs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-softmax over the vocabulary at every answer token of a scoring batch.

    Returns (log_probs [n, V] float32, targets [n], batch row of each [n]). lm_head runs only on
    the answer positions: a full [B, T, V] would be 150k wide for every prompt token too.
    """
    body = getattr(model, model.base_model_prefix)
    with cached_weights(model):
        h = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 use_cache=False).last_hidden_state
        y = batch["labels"][:, 1:]
        sel = y != -100
        logits = model.lm_head(h[:, :-1][sel]).float()
    return torch.log_softmax(logits, -1), y[sel], sel.nonzero()[:, 0]
