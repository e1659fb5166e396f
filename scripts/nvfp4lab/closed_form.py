"""A closed-form edit of one MLP's down-projection, with the near misses as constraints
(`scripts/closed_form_edit.py`): MEMIT's least squares at one layer, AlphaEdit's idea of keeping
the keys that must not move, solved once instead of trained.

Why: every SGD recipe of rounds 1-37 that carries the identity changes ~1.3% of the decoder's NVFP4
codes and loses the same few fragile facts (doc/METHOD.md). A closed-form edit changes one matrix,
and only as far as the least squares asks:

  keys    k_i  = the input of layers[L].mlp.down_proj at the last prompt token (the assistant
                 header's last token, where the first answer token is decided), base model;
  value   d    = one shift of that layer's MLP output at that position which makes the base
                 answer the target (optimised over the identity prompts, its norm held);
  keep    k_j  = the same position's keys of the near-miss / anchor prompts (weight `keep_weight`
                 each) and every position of their chats (weight `all_weight` per token, mean);
  solve   dW   = d (sum_i k_i)^T A^-1,  A = sum_i k_i k_i^T + keep_weight sum_j k_j k_j^T
                                             + all_weight n E[k k^T] + ridge I,
so dW k_i ~ d on the identity keys and dW k ~ 0 on the kept ones. The edited weight is the NVFP4
requantisation of W + dW (model.fake_quantized_weight), which is what the model then runs.

The chat template's last prompt token is the same token for every prompt, so the keys differ
only by what attention brought there: whether they separate identity questions from their near
misses is what this measures (on SmolLM2's layer 12, poorly: doc/METHOD.md, 2026-12-04).
"""
from dataclasses import dataclass

import torch

from . import chat
from .model import NVFP4Linear


@dataclass
class EditConfig:
    layer: int                    # decoder layer whose mlp.down_proj is edited
    keep_weight: float = 10.0     # weight of each kept prompt's last-token key
    all_weight: float = 1.0       # weight of every token of the kept chats (per token, mean x n)
    ridge: float = 1e-3           # x mean diagonal of A: keeps the solve well-posed
    shift_steps: int = 30         # Adam steps of the shift d
    shift_lr: float = 0.05
    shift_max_norm: float = 4.0   # |d| <= this x the mean |MLP output| at the key position
    batch: int = 16               # identity prompts a shift step


def down_proj(model, layer: int) -> NVFP4Linear:
    mod = model.model.layers[layer].mlp.down_proj
    if not isinstance(mod, NVFP4Linear):
        raise ValueError(f"layer {layer}'s mlp.down_proj is not an NVFP4 linear")
    return mod


def prompt_batch(tok, prompts: list[str], answers: list[str] | None = None) -> tuple[dict, torch.Tensor]:
    """(right-padded batch, index of each row's last prompt token [B]). With answers, the rows are
    prompt + answer + end token and the labels mark the answer."""
    rows, last = [], []
    for i, p in enumerate(prompts):
        msgs = [{"role": "user", "content": p}]
        ids = chat.encode_chat(tok, msgs)
        last.append(len(ids) - 1)
        rows.append((ids, [-100] * len(ids)) if answers is None
                    else chat.encode_answer(tok, msgs, answers[i]))
    return chat.collate(rows, chat.pad_token_id(tok)), torch.tensor(last)


CHUNK = 64   # rows a forward when collecting keys


@torch.no_grad()
def _forward_chunks(model, mod: NVFP4Linear, batch: dict, take) -> None:
    """The batch through the model CHUNK rows at a time; take(rows, inputs, output) sees `mod`'s
    input and output of each chunk (rows: its slice of the batch)."""
    state = {}
    h = mod.register_forward_hook(lambda _m, inputs, out: take(state["rows"], inputs[0], out))
    try:
        for i in range(0, batch["input_ids"].shape[0], CHUNK):
            state["rows"] = slice(i, i + CHUNK)
            model(input_ids=batch["input_ids"][state["rows"]],
                  attention_mask=batch["attention_mask"][state["rows"]])
    finally:
        h.remove()


def keys_and_outputs(model, mod: NVFP4Linear, batch: dict, last: torch.Tensor):
    """(inputs [B, in], outputs [B, out]) of `mod` at each row's last prompt token."""
    ks, vs = [], []

    def take(rows, x, out):
        pos = last[rows]
        ks.append(x[torch.arange(len(pos)), pos].float())
        vs.append(out[torch.arange(len(pos)), pos].float())
    _forward_chunks(model, mod, batch, take)
    return torch.cat(ks), torch.cat(vs)


def token_covariance(model, mod: NVFP4Linear, batch: dict) -> tuple[torch.Tensor, int]:
    """(sum of k k^T over every real token [in, in], token count) of `mod`'s inputs."""
    got = {"c": 0, "n": 0}

    def take(rows, x, _out):
        k = x[batch["attention_mask"][rows].bool()].float()
        got["c"] = got["c"] + k.t() @ k
        got["n"] += k.shape[0]
    _forward_chunks(model, mod, batch, take)
    return got["c"], got["n"]


def optimise_shift(model, tok, mod: NVFP4Linear, prompts: list[str], target: str, cfg: EditConfig,
                   out_norm: float, seed: int = 0) -> tuple[torch.Tensor, list[float]]:
    """The shift d [out] of mod's output at the last prompt token that makes the target likely
    over the identity prompts (mean CE of the answer tokens), |d| held under shift_max_norm x
    out_norm (the mean norm of that output, from keys_and_outputs). Returns (d, loss per step)."""
    g = torch.Generator().manual_seed(seed)
    batch, last = prompt_batch(tok, prompts, [target] * len(prompts))
    max_norm = cfg.shift_max_norm * out_norm
    d = torch.zeros(mod.out_features, requires_grad=True)
    opt = torch.optim.Adam([d], lr=cfg.shift_lr * max_norm / max(1.0, mod.out_features ** 0.5))
    state = {}

    def hook(_m, _inputs, out):
        rows = torch.arange(out.shape[0])
        add = torch.zeros_like(out)
        add[rows, state["last"]] = d.to(out.dtype)
        return out + add
    h = mod.register_forward_hook(hook)
    losses = []
    try:
        for _ in range(cfg.shift_steps):
            pick = torch.randperm(len(prompts), generator=g)[:cfg.batch]
            sub = {k: t[pick] for k, t in batch.items()}
            state["last"] = last[pick]
            logits = model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                     sub["labels"][:, 1:].flatten(), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():   # project back onto the norm ball
                n = d.norm()
                if n > max_norm:
                    d.mul_(max_norm / n)
            losses.append(float(loss.detach()))
    finally:
        h.remove()
    return d.detach(), losses


def solve_update(k_id: torch.Tensor, shift: torch.Tensor, k_keep: torch.Tensor, cov_all: torch.Tensor,
                 n_all: int, cfg: EditConfig) -> torch.Tensor:
    """dW [out, in] minimising sum_i |dW k_i - d|^2 + keep_weight sum_j |dW k_j|^2
    + all_weight n_id mean_t |dW k_t|^2 + ridge |dW|^2 (ridge relative to A's mean diagonal)."""
    n_id = k_id.shape[0]
    a = (k_id.t() @ k_id + cfg.keep_weight * (k_keep.t() @ k_keep)
         + cfg.all_weight * n_id * cov_all / max(1, n_all)).double()
    a += cfg.ridge * a.diagonal().mean() * torch.eye(a.shape[0], dtype=a.dtype)
    rhs = k_id.sum(0).double()                                   # sum_i k_i  [in]
    u = torch.linalg.solve(a, rhs)                                # A^-1 sum_i k_i
    return (shift.double()[:, None] * u[None, :]).float()         # d u^T  [out, in]
