"""Full-parameter NVFP4 QAT: layer-wise LR, data mix, monitoring, collapse detection and fallback.

One attempt = zero every delta (the initial weights), a fresh AdamW, `steps` steps on the mix.
After it (and every --probe-every steps) the MONITOR set judges the model (evaluate.run); a
collapse (an ordinary prompt answered with the identity, systematic loops, facts forgotten, NaN
loss) discards the attempt - training never continues from a collapsed state - and the next
attempt starts again from the initial weights with a safer policy (every LR times
--retry-lr-scale, anchor share doubled, and the --retry-mix data if the recipe gives one), up to
--max-retries times. The held-out set is not seen here: train.py judges it once, afterwards.
"""
import collections
import hashlib
import math
import os
import random
import re
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from . import adam8, chat, evaluate, mix, nullspace, sparse, surface
from .anchor_check import FRAME, words
from .config import GROUPS, TrainConfig
from .atomic import AtomicFile
from .generate import answer_batches, answer_log_probs, greedy_answers
from .model import deltas_off, reset_deltas, unpacked_bytes
from .probes import Thresholds, format_summary, repetition
from .tsv import DataError, normalize_prompt

SUCCESS, NOT_REACHED, COLLAPSED = 0, 3, 4


class TrainingCollapse(RuntimeError):
    pass


def group_of(key: str, delta: torch.Tensor) -> str:
    if key.startswith("lm_head"):
        return "head"
    if "embed_tokens" in key:
        return "embed"
    return "norm" if delta.dim() == 1 else "blocks"


def layer_of(key: str) -> int | None:
    parts = key.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def layer_lr_scales(spec: str | None, num_layers: int) -> dict[int, float]:
    """--layer-lr 'A-B:x,C:y' -> {layer: multiplier}; a bad part raises ValueError naming it."""
    scales: dict[int, float] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        try:
            span, x = part.split(":")
            a, _, b = span.strip().partition("-")
            first, last, x = int(a), int(b or a), float(x)
        except ValueError:
            raise ValueError(f"--layer-lr {spec!r}: {part!r} is not 'A-B:x' or 'A:x'") from None
        if not (0 <= first <= last < num_layers and x >= 0):   # also refuses a NaN
            raise ValueError(f"--layer-lr {spec!r}: {part!r}: layers must lie in 0-{num_layers - 1} "
                             "and the multiplier must be >= 0")
        for layer in range(first, last + 1):
            if layer in scales:
                raise ValueError(f"--layer-lr {spec!r}: layer {layer} is given twice")
            scales[layer] = x
    return scales


def freeze_layers(deltas, layers: set[int]):
    """--layer-lr A-B:0: these layers' deltas get no gradient and no optimizer state, so their
    stored bytes stay the base's; returns the deltas still trained."""
    keep = []
    for key, d in deltas:
        if layer_of(key) in layers:
            d.requires_grad_(False)
        else:
            keep.append((key, d))
    return keep


def select_trainable(deltas, num_layers: int, train_last_layers: int):
    """--train-last-layers N (0 = all): freeze the deltas of layers below L-N."""
    if train_last_layers <= 0:
        return deltas
    return freeze_layers(deltas, set(range(num_layers - train_last_layers)))


def checkpoint_layers(model, every: int = 1) -> None:
    """transformers' own activation checkpointing: each decoder layer keeps only its input and
    recomputes the rest in backward (train mode only; probes run in eval mode, unaffected).
    4B shape, 16 x 64 rows: the layers' activations are ~6 GiB of the step's peak (~10 GiB with
    compiled layers). every=k checkpoints layers 0, k, 2k, ... only: a share 1/k of the saving
    for a share 1/k of the recompute (selective checkpointing)."""
    if every < 1:
        raise ValueError(f"checkpoint_layers: every must be >= 1, got {every}")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):     # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for i, layer in enumerate(getattr(model, model.base_model_prefix).layers):
        layer.gradient_checkpointing = i % every == 0


def uncheckpoint_layers(model) -> None:
    """checkpoint_layers undone: every layer keeps its activations for backward again."""
    getattr(model, "activation_checkpointing_disable",        # transformers >= 5.2x
            getattr(model, "gradient_checkpointing_disable", None))()


def compile_layers(model) -> None:
    """torch.compile each decoder layer's TRAINING forward (grad on, train mode); every other call
    (generation, the no-grad base forward of the KL) keeps the eager forward, which the CUDA-graph
    decoders capture. Why: on the H200 the 4B train step is host-bound (8,468 kernels, ~half the
    step's wall time is launch overhead; doc/BENCHMARKS.md), and a compiled layer fuses the
    fake-quant, norm, rope and SwiGLU element-wise work into fewer kernels with no Python per op.

    The layers share one graph (one per checkpointing mode): dynamo treats a layer's parameters
    as graph inputs, so layers of one shape pass the same guards, given two things. (1) The same
    module classes: torch.nn.utils.parametrize gives each parametrized norm a class of its own
    and dynamo guards on it; make_trainable makes them one (model.share_parametrized_classes).
    (2) No KV cache: batch_loss passes use_cache=False, or dynamo guards on each layer's slot of
    transformers' DynamicCache.
    Without them each layer compiled its own graph (4B: 58.7-77.5 s at the first step,
    doc/BENCHMARKS.md), and past dynamo's recompile limit of 8 the other layers silently ran
    eager. The limit is still raised to twice the layer count, so that a model whose layers do
    differ compiles them all.
    Works under layer checkpointing and with StepInBackward's hooks (tests/test_trainer.py)."""
    layers = getattr(model, model.base_model_prefix).layers
    cfg = torch._dynamo.config
    # room for a graph per layer and mode, should layers ever differ (they share one a mode now)
    cfg.recompile_limit = max(cfg.recompile_limit, 2 * len(layers) + 8)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * len(layers) + 64)
    # transformers >= 5.25 runs attention through the `kernels` package, which sets a context
    # variable around each call: under layer checkpointing dynamo refuses that side effect (a graph
    # break, the layer runs eager) unless told not to replay it in backward, where it is a no-op.
    if hasattr(cfg, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        cfg.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    for layer in layers:
        eager = layer.forward
        compiled = torch.compile(eager)

        def forward(*args, _eager=eager, _compiled=compiled, _layer=layer, **kwargs):
            if _layer.training and torch.is_grad_enabled():
                return _compiled(*args, **kwargs)
            return _eager(*args, **kwargs)
        layer.forward = forward


COMPILE_MIN_WEIGHTS = 1e9   # NVFP4 weight values; the 4B holds 3.6e9 (+ lm_head), SmolLM2 1e8


def compile_pays(model) -> bool:
    """--compile-layers auto: compile where it was measured to pay. The 4B on an H200: a step
    0.399 -> 0.186 s with layer checkpointing (bench.py, 2026-12-04), for a first-step compile of
    9.6 s with a cold cache and 2.8 s with a warm one (doc/BENCHMARKS.md, twenty-sixth session).
    Not on the CPU (inductor's C++ build, never measured to pay on 2 cores), not without triton,
    and not below 1e9 NVFP4 weights: SmolLM2's recorded study runs are eager, and compiled kernels
    round differently, so their commands would no longer reproduce their numbers."""
    from torch.utils._triton import has_triton
    on_cuda = next(model.parameters()).is_cuda
    return on_cuda and has_triton() and unpacked_bytes(model) // 2 >= COMPILE_MIN_WEIGHTS


def bucket_of(key: str) -> str:
    """Tensors stepped together: one decoder layer, or one tensor outside the layers."""
    layer = layer_of(key)
    return f"layer {layer}" if layer is not None else key


class StepInBackward:
    """AdamW that steps each bucket (a decoder layer) inside backward, as soon as the bucket's
    last gradient is complete, and frees those gradients at once.

    Why: the gradients of every delta at once are a second copy of the trainable state (4B:
    8.8 GB in bf16) held until `optimizer.step()`. Stepping layer by layer during backward keeps
    at most one layer's gradients alive. The price: `--grad-clip` clips each bucket's gradient
    norm, not the global norm, which is only known once backward has finished. AdamW divides
    every element by its own running RMS, so a per-layer rescaling only matters for spikes, the
    case clipping is for.

    Usage: `loss.backward(); stepper.flush()` (flush steps any bucket that got only part of its
    gradients, so no gradient is ever dropped); `stepper.close()` removes the hooks.
    """

    def __init__(self, deltas, lrs: dict, weight_decay: float, grad_clip: float,
                 projectors: dict | None = None, layer_scales: dict | None = None,
                 state_bits: int = 16):
        self.grad_clip = grad_clip
        self.projectors = projectors or {}   # --protect-neighbours: delta <- delta @ P per step
        self.frozen = {}                     # --sparse-share: delta <- 0 where frozen, per step
        buckets: dict[str, list] = {}
        for key, d in deltas:
            buckets.setdefault(bucket_of(key), []).append((key, d))
        self.buckets = []
        self.hooks = []
        for name, members in buckets.items():
            # --layer-lr: a bucket is one layer, so its multiplier scales every group in it
            x = (layer_scales or {}).get(layer_of(members[0][0]), 1.0)
            groups = [{"params": [d for k, d in members if group_of(k, d) == g], "lr": lrs[g] * x,
                       "peak_lr": lrs[g] * x, "name": g} for g in GROUPS]
            live = [g for g in groups if g["params"]]
            if state_bits == 8:   # --adam-state-bits 8: one byte a state value (adam8.py)
                opt = adam8.AdamW8bit(live, betas=(0.9, 0.999), eps=1e-8,
                                      weight_decay=weight_decay)
            else:
                opt = torch.optim.AdamW(live, betas=(0.9, 0.999), eps=1e-8,
                                        weight_decay=weight_decay,
                                        fused=True if members[0][1].is_cuda else None)
            b = {"name": name, "opt": opt, "params": [d for _, d in members], "ready": 0}
            self.buckets.append(b)
            for _, d in members:
                self.hooks.append(d.register_post_accumulate_grad_hook(
                    lambda p, b=b: self._ready(b)))

    def set_lr_scale(self, scale: float) -> None:
        """Every group's LR = its configured (peak) LR x scale (--lr-schedule)."""
        for b in self.buckets:
            for g in b["opt"].param_groups:
                g["lr"] = g["peak_lr"] * scale

    def _ready(self, b) -> None:
        b["ready"] += 1
        if b["ready"] == len(b["params"]):
            self._step(b)

    def _step(self, b) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in b["params"] if p.grad is not None],
                                           self.grad_clip)
        b["opt"].step()
        b["opt"].zero_grad(set_to_none=True)
        if self.projectors:
            nullspace.project_(b["params"], self.projectors)
        if self.frozen:
            sparse.apply_(b["params"], self.frozen)
        b["ready"] = 0

    def flush(self) -> None:
        for b in self.buckets:
            if b["ready"]:
                self._step(b)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def lr_scale(step: int, steps: int, warmup: int, schedule: str) -> float:
    """LR multiplier of step 1..steps: linear warm-up over `warmup` steps, then constant or a
    cosine down to 0 at the last step. Why decay: the last steps then make small moves, so the
    deltas settle instead of ending on whatever the last noisy batch pushed; under NVFP4 a small
    move rarely crosses a code boundary, so the stored file changes less at the end."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def step_lr_scale(step: int, cfg: TrainConfig) -> float:
    """lr_scale of the run; with --sparse-restart the schedule starts again after the cut, over
    the remaining steps: once only 1% of the values may move, the first schedule has decayed
    (cosine at step 60 of 240: 0.85 of the peak, 0 at the end) while the identity still rises."""
    if cfg.sparse_restart and cfg.sparse_share > 0 and step > cfg.sparse_at:
        return lr_scale(step - cfg.sparse_at, cfg.steps - cfg.sparse_at, cfg.warmup_steps,
                        cfg.lr_schedule)
    return lr_scale(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule)


def batch_loss(model, batch: dict, keep_rows: torch.Tensor, kl_weight: float,
               ul_weight: float = 0.0, keep_ce_weight: float = 1.0,
               repeat_ul_weight: float = 0.0, keep_margin_weight: float = 0.0,
               keep_margin: float = 1.0, chunk_positions: int = 0):
    """(loss, ce, kl, ul, margin): CE on the answer tokens, KL to the frozen base on the answers of rows
    that keep the base's behaviour (anchor / neighbour), and unlikelihood of the identity answer
    on the near-miss rows that encode_batch appended (batch["ul_rows"]).

    keep_ce_weight (--keep-ce-weight) weighs the CE of the KL rows' tokens; the CE is the
    weighted mean over the tokens that have one (0: those rows get the KL alone).
    repeat_ul_weight (--self-repeat-ul) adds that weight x mean -log(1 - p) of the tokens
    batch["repeat"] marks (in the model's own answers: the tokens that repeat an n-gram).
    keep_margin_weight (--keep-margin-weight) adds that weight x greedy_margin_hinge on the KL
    positions (needs kl_weight > 0: it uses the base's log-probs the KL computes); `margin` is
    the hinge unweighted (0 when off).

    lm_head runs only on the positions that have a label: the [B, T, vocab] logits of a full
    forward would be 150k wide for every prompt token too. With chunk_positions > 0 and more
    labelled positions than that, head_chunked_loss computes the same terms a chunk of positions
    at a time (--head-chunk-mib).
    """
    body = getattr(model, model.base_model_prefix)
    # use_cache=False: a forward over whole chats needs no KV cache, and transformers builds one
    # in train mode unless layers are checkpointed; with it, compiled layers guard on each
    # layer's cache slot and compile a graph per layer (CPU, 4 tiny layers: 4 graphs, not 1)
    h = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
             use_cache=False).last_hidden_state
    y = batch["labels"][:, 1:]                           # [B, T-1] next-token targets
    sel = y != -100
    on_ul, no_ce = ul_and_no_ce(batch, keep_rows, sel)
    if chunk_positions > 0 and int(sel.sum()) > chunk_positions:
        return head_chunked_loss(model, body, batch, h, y, sel, on_ul, no_ce, keep_rows,
                                 kl_weight, ul_weight, keep_ce_weight, repeat_ul_weight,
                                 keep_margin_weight, keep_margin, chunk_positions)
    logits = model.lm_head(h[:, :-1][sel]).float()       # [n, V]
    ce_w = None                                          # [n] CE weight of each position
    if keep_ce_weight != 1.0:
        ce_w = torch.where(keep_rows[:, None].expand_as(sel)[sel], keep_ce_weight, 1.0)
    use = ~no_ce if ce_w is None else ~no_ce & (ce_w > 0)
    if not bool(use.any()):
        ce = logits.sum() * 0.0
    elif ce_w is None:
        ce = F.cross_entropy(logits[use], y[sel][use])
    else:
        per = F.cross_entropy(logits[use], y[sel][use], reduction="none")
        ce = (per * ce_w[use]).sum() / ce_w[use].sum()
    kl = torch.zeros((), device=ce.device)
    ul = torch.zeros((), device=ce.device)
    margin = torch.zeros((), device=ce.device)
    a_sel = kl_positions(batch, keep_rows, sel)
    if kl_weight > 0 and bool(a_sel.any()):
        with torch.no_grad(), deltas_off(model):
            hb = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False).last_hidden_state
            base_logp = F.log_softmax(model.lm_head(hb[:, :-1][a_sel]).float(), -1)
        logp = F.log_softmax(logits[a_sel[sel]], -1)
        kl = F.kl_div(logp, base_logp, log_target=True, reduction="batchmean")
        if keep_margin_weight > 0:
            margin = greedy_margin_hinge(logp, base_logp, keep_margin)
    if ul_weight > 0 and bool(on_ul.any()):
        # -log(1 - p(identity token)): large only where the identity is likely, so it pushes the
        # identity answer off near-miss prompts without pulling them anywhere else.
        ul = unlikelihood(logits[on_ul], y[sel][on_ul])
    loss = ce + kl_weight * kl + ul_weight * ul + keep_margin_weight * margin
    repeat = batch.get("repeat")
    if repeat_ul_weight > 0 and repeat is not None and bool(repeat[:, 1:][sel].any()):
        on_rep = repeat[:, 1:][sel]                      # [n] the label there repeats an n-gram
        loss = loss + repeat_ul_weight * unlikelihood(logits[on_rep], y[sel][on_rep])
    return loss, ce, kl, ul, margin


def ul_and_no_ce(batch: dict, keep_rows: torch.Tensor, sel: torch.Tensor):
    """([n] position belongs to an unlikelihood row, [n] position gets no CE: an unlikelihood row
    or a row of the model's own answers, batch["kl_only"]) over the labelled positions sel."""
    ul_rows = batch.get("ul_rows")
    ul_rows = torch.zeros_like(keep_rows) if ul_rows is None else ul_rows
    on_ul = ul_rows[:, None].expand_as(sel)[sel]
    kl_only = batch.get("kl_only")
    no_ce = on_ul if kl_only is None else on_ul | kl_only[:, None].expand_as(sel)[sel]
    return on_ul, no_ce


def head_chunk_positions(head_chunk_mib: int, vocab: int) -> int:
    """--head-chunk-mib -> the most labelled positions whose float32 logits [n, vocab] one chunk
    holds (0: never chunk)."""
    return 0 if head_chunk_mib <= 0 else max(1, head_chunk_mib * 2 ** 20 // (4 * vocab))


def head_chunked_loss(model, body, batch: dict, h: torch.Tensor, y: torch.Tensor,
                      sel: torch.Tensor, on_ul: torch.Tensor, no_ce: torch.Tensor,
                      keep_rows: torch.Tensor, kl_weight: float, ul_weight: float,
                      keep_ce_weight: float, repeat_ul_weight: float, keep_margin_weight: float,
                      keep_margin: float, chunk: int):
    """batch_loss's terms, `chunk` labelled positions at a time: the same weighted means, each
    summed over the chunks and divided by its count once.

    Why: the head's float32 logits are [n, vocab] (4B: 151,936 wide; a batch of 64 rows x 48
    answer tokens is 1.9 GB a copy), and the log-softmax, the base's log-probs for the KL and
    their gradients are more copies of it. Each chunk runs under activation checkpointing, so
    backward recomputes its logits and, on KL positions, the base's log-probs (up to two head
    matmuls more) instead of keeping them: holding the base's log-probs of every chunk until
    backward would be the one-piece memory again.
    """
    ce_w = torch.where(keep_rows[:, None].expand_as(sel)[sel], keep_ce_weight, 1.0)
    ce_w = torch.where(no_ce, 0.0, ce_w)                  # [n] CE weight of each position
    on_kl = kl_positions(batch, keep_rows, sel)[sel]
    if kl_weight <= 0:
        on_kl = torch.zeros_like(on_kl)
    repeat = batch.get("repeat")
    on_rep = (repeat[:, 1:][sel] if repeat is not None and repeat_ul_weight > 0
              else torch.zeros_like(on_ul))
    if ul_weight <= 0:
        on_ul = torch.zeros_like(on_ul)
    hb = None
    if bool(on_kl.any()):
        with torch.no_grad(), deltas_off(model):
            hb = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False).last_hidden_state[:, :-1][sel]
    hs, ys = h[:, :-1][sel], y[sel]
    margin_on = keep_margin_weight > 0
    ul_on = bool(on_ul.any()) or bool(on_rep.any())     # else no softmax over the chunk for them

    def sums(h_c, y_c, w_c, kl_c, ul_c, rep_c, hb_c):
        """[5] sums over the chunk: weighted CE, KL, margin hinge, unlikelihood, repeat UL."""
        logits = model.lm_head(h_c).float()
        zero = logits.sum() * 0.0
        ce = (F.cross_entropy(logits, y_c, reduction="none") * w_c).sum()
        kl = margin = zero
        if hb_c is not None and bool(kl_c.any()):
            with torch.no_grad(), deltas_off(model):
                base_logp = F.log_softmax(model.lm_head(hb_c[kl_c]).float(), -1)
            logp = F.log_softmax(logits[kl_c], -1)
            kl = F.kl_div(logp, base_logp, log_target=True, reduction="sum")
            if margin_on:
                margin = greedy_margin_hinge(logp, base_logp, keep_margin) * int(kl_c.sum())
        ul = rep = zero
        if ul_on:
            each = unlikelihood_terms(logits, y_c)
            ul, rep = (each * ul_c).sum(), (each * rep_c).sum()
        return torch.stack([ce, kl, margin, ul, rep])

    total = 0.0
    for i in range(0, hs.shape[0], chunk):
        part = slice(i, i + chunk)
        args = (hs[part], ys[part], ce_w[part], on_kl[part], on_ul[part].float(),
                on_rep[part].float(), None if hb is None else hb[part])
        total = total + torch.utils.checkpoint.checkpoint(sums, *args, use_reentrant=False)
    counts = torch.stack([ce_w.sum(), on_kl.sum(), on_kl.sum(), on_ul.sum(), on_rep.sum()]).float()
    ce, kl, margin, ul, rep = (total / counts.clamp_min(1.0)).unbind()
    loss = ce + kl_weight * kl + ul_weight * ul + keep_margin_weight * margin
    loss = loss + repeat_ul_weight * rep
    return loss, ce, kl, ul, margin


def greedy_margin_hinge(logp: torch.Tensor, base_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """[n, V] log-probs of the model and of the base at the same positions -> the mean over the
    positions of max(0, min(m_base, cap) - m_model), m = the lead of the base's top token over the
    runner-up (lead_over_runner_up). Zero while the model prefers the base's greedy token at least
    as clearly as the base did (up to cap nats); it grows as a tie the base broke one way is pushed
    the other way, which is what flips a greedy answer."""
    star = base_logp.argmax(-1)                                   # [n] the base's greedy token
    m_base = lead_over_runner_up(base_logp, star)[0].clamp(max=cap)
    return F.relu(m_base - lead_over_runner_up(logp, star)[0]).mean()


def lead_over_runner_up(logp: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, V] log-probs and [n] tokens -> ([n] log p(token) - the largest other log p, [n] that
    other token): negative where the token is not the first choice."""
    two = logp.topk(2, dim=-1)
    other = torch.where(two.indices[:, 0] == token, two.indices[:, 1], two.indices[:, 0])
    return (logp.gather(1, token[:, None]) - logp.gather(1, other[:, None])).squeeze(1), other


def kl_positions(batch: dict, keep_rows: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    """[B, T-1] the labelled positions that get the KL: those of the keep rows (not of the
    unlikelihood rows), except the end of an answer cut where the base goes round
    (batch["trimmed"], --trim-base-loops): there the base wants to go on, the row teaches to end."""
    ul_rows = batch.get("ul_rows")
    out = sel & keep_rows[:, None]
    if ul_rows is not None:
        out = out & ~ul_rows[:, None]
    trimmed = batch.get("trimmed")
    if trimmed is not None:   # elementwise, no .any(): a host sync every step is not worth it
        last = sel & (sel.cumsum(1) == sel.sum(1, keepdim=True))      # each row's last label
        out = out & ~(last & trimmed[:, None])
    return out


SENTENCE_END = re.compile(r"[.!?。！？]+(?=\s|$)|\n")   # trim_loop's cut and drift's first sentence


def trim_loop(answer: str, n: int = 3) -> str:
    """The answer up to where it starts going round, ending on a whole sentence: cut before the
    second occurrence of its first repeated word n-gram, back to the last sentence end (. ! ? or
    a line break) before it ("I'm sorry for any mistakes. I'm sorry for any mistakes." -> "I'm
    sorry for any mistakes."). Unchanged when no word n-gram repeats or no sentence ends before
    the repeat: a cut mid-sentence would teach ending there."""
    words = list(re.finditer(r"\S+", answer))
    seen = set()
    for k in range(n - 1, len(words)):
        gram = tuple(w.group() for w in words[k - n + 1:k + 1])
        if gram in seen:
            head = answer[:words[k - n + 1].start()].rstrip()
            ends = [m.end() for m in SENTENCE_END.finditer(head)]
            return head[:ends[-1]].rstrip() if ends else answer
        seen.add(gram)
    return answer


def unlikelihood(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean -log(1 - p(target)) over rows of logits [n, V]: large only where the target is
    likely, so it pushes that token down without pulling the row toward anything else."""
    return unlikelihood_terms(logits, targets).mean()


def unlikelihood_terms(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[n] -log(1 - p(target)) of each row of logits [n, V] (unlikelihood's terms)."""
    p = F.softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
    return -torch.log((1 - p).clamp_min(1e-6))


def encode_batch(tok, rows, seq_len: int, replay: dict, device,
                 ul_target: str | None = None, ul_tokens: int = 0,
                 trim_loops: float = 0.0, ul_skip: int = 0,
                 kl_only_prompts: frozenset = frozenset(),
                 no_kl_prompts: frozenset = frozenset()) -> tuple[dict, torch.Tensor, int]:
    """Rows (prompt, target, role[, context messages]) -> a padded batch, the mask of rows that
    get the KL to the base, and how many rows were truncated.

    With ul_target, each neighbour row also gets an unlikelihood row appended: its chat with the
    identity answer, labelled only from the first token where that answer leaves the row's own
    (replayed) answer, so a shared opening like "I" is not pushed down (batch["ul_rows"]);
    ul_tokens > 0 (--unlikelihood-tokens) labels only that many tokens from there on, so the
    rest of the identity answer (" of F#.") is not taught as something to avoid; ul_skip > 0
    (--unlikelihood-skip) never labels the identity answer's first ul_skip tokens, so its
    generic opening ("I am the") is not taught as something to avoid either.
    A row with context (a near miss asked right after the identity was answered) learns the
    base's single-turn answer and gets no KL: in that context the base itself tends to copy the
    identity from the chat, which is what the row is there to unlearn.
    trim_loops > 0 (--trim-base-loops): a keep row whose replayed base answer repeats itself
    that much (probes.repetition) learns it only up to where it goes round (trim_loop), then the
    end; the KL skips that end (kl_positions).
    kl_only_prompts (--replay-stock-kl, stock_answer_prompts): keep rows asked alone with one of
    these prompts get the KL to the base and no CE, like the model's own answers.
    no_kl_prompts (--replay-fix-no-kl): keep rows with one of these prompts (the anchors that
    learn the file's answer, which the base got wrong) get the CE and no KL: the base's
    distribution along that answer is the mistake the fix replaces.
    """
    enc, truncated, ul, kl_rows, trimmed, kl_only = [], 0, [], [], [], []
    for row in rows:
        prompt, target, role = row[:3]
        context = list(row[3]) if len(row) > 3 and row[3] else []
        cut_here = False
        if role in mix.KEEP_ROLES and replay:
            target = replay.get(prompt, target)
            if trim_loops > 0 and repetition(target) >= trim_loops:
                short = trim_loop(target)
                cut_here, target = short != target, short
        trimmed.append(cut_here)
        messages = context + [{"role": "user", "content": prompt}]
        ids, labels, cut = chat.encode_chat_row(tok, messages, target, seq_len)
        truncated += cut
        enc.append((ids, labels))
        kl_rows.append((role in mix.KEEP_ROLES or role == mix.SELF_ROLE) and not context
                       and not (role in mix.KEEP_ROLES and prompt in no_kl_prompts))
        # own answers; a stock prompt's row where it gets the KL (asked alone; the set holds
        # keep prompts only)
        kl_only.append(role == mix.SELF_ROLE or (kl_rows[-1] and prompt in kl_only_prompts))
        if ul_target is not None and role == "neighbour":
            uids, ulabels, _ = chat.encode_chat_row(tok, messages, ul_target, seq_len)
            shared = 0
            while shared < min(len(ids), len(uids)) and ids[shared] == uids[shared]:
                shared += 1
            first = next((i for i, x in enumerate(ulabels) if x != -100), len(ulabels))
            shared = max(shared, first + ul_skip)        # --unlikelihood-skip: not the opening
            tail = ulabels[shared:shared + ul_tokens] if ul_tokens > 0 else ulabels[shared:]
            ul.append((uids, [-100] * shared + tail + [-100] * (len(ulabels) - shared - len(tail))))
    batch = {k: v.to(device) for k, v in chat.collate(enc + ul, chat.pad_token_id(tok)).items()}
    keep = torch.tensor(kl_rows + [True] * len(ul), device=device)
    batch["ul_rows"] = torch.tensor([False] * len(enc) + [True] * len(ul), device=device)
    batch["trimmed"] = torch.tensor(trimmed + [False] * len(ul), device=device)
    batch["kl_only"] = torch.tensor(kl_only + [False] * len(ul), device=device)
    own = [b for b, row in enumerate(rows) if row[2] == mix.SELF_ROLE]
    if own:   # the model's own answers (--self-kl-rows): where they repeat themselves
        batch["repeat"] = torch.zeros_like(batch["labels"], dtype=torch.bool)      # [B, T]
        for b in own:
            labels = enc[b][1]
            batch["repeat"][b, :len(labels)] = torch.tensor(repeated_ngram_ends(labels))
    return batch, keep, truncated


def stock_answer_prompts(replay: dict, prompts, min_prompts: int) -> frozenset:
    """The prompts (of `prompts`) whose replayed base answer is also the answer, case and spacing
    aside, of min_prompts or more of them (--replay-stock-kl): the base's stock answers ("I'm
    sorry for any mistakes."), which CE on so many prompts would make the edit's default."""
    if min_prompts <= 0:
        return frozenset()
    by_answer: dict[str, set] = {}
    for p in prompts:
        if p in replay:
            by_answer.setdefault(" ".join(replay[p].lower().split()), set()).add(p)
    return frozenset(p for group in by_answer.values() if len(group) >= min_prompts for p in group)


def repeated_ngram_ends(labels: list[int], n: int = 3) -> list[bool]:
    """Per position: the labelled (answer) token there completes an n-gram of answer tokens that
    already occurred earlier in the answer. A loop's repeats are marked, its first round is not,
    so the unlikelihood (--self-repeat-ul) pushes down going round again, not the phrase."""
    out = [False] * len(labels)
    answer = [(i, t) for i, t in enumerate(labels) if t != -100]
    seen = set()
    for k in range(n - 1, len(answer)):
        gram = tuple(t for _, t in answer[k - n + 1:k + 1])
        if gram in seen:
            out[answer[k][0]] = True
        seen.add(gram)
    return out


def ask_after(rows: list[tuple], role: str, share: float, rng: random.Random,
              context_for) -> list[tuple]:
    """That share of the `role` rows gets the messages context_for() returns asked before it
    (rows become (prompt, target, role, context)); the others are left as they are."""
    return [(*row[:3], context_for()) if row[2] == role and rng.random() < share else row
            for row in rows]


def exchange(prompt: str, answer: str) -> tuple[dict, dict]:
    return {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}


def with_context(rows: list[tuple], srcs, share: float, rng: random.Random) -> list[tuple]:
    """--context-share: that share of the neighbour rows is asked as a second turn, right after a
    turn in which an identity prompt (drawn from the target rows) got the identity answer - the
    CounterFact+ setting, where a near miss must stay a near miss although the edited answer
    is in the chat."""
    pool = [r for s in srcs if s.role == "target" for r in s.rows]
    if share <= 0 or not pool:
        return rows

    def identity_turn():
        q = rng.choice(pool)
        return exchange(q.prompt, q.target)
    return ask_after(rows, "neighbour", share, rng, identity_turn)


def identity_after_chat(rows: list[tuple], srcs, share: float, rng: random.Random,
                        replay: dict) -> list[tuple]:
    """--identity-context-share: that share of the identity (target) rows is asked after one or
    two ordinary exchanges (anchor prompts with the base's own answers, or the file's answers
    without --replay), so the edit holds when the question comes in the middle of a chat and not
    only as its first turn. The row still learns the identity answer."""
    pool = [r for s in srcs if s.role == "anchor" for r in s.rows]
    if share <= 0 or not pool:
        return rows

    def ordinary_turns():
        picked = rng.sample(pool, min(len(pool), rng.choice((1, 2))))
        return tuple(m for q in picked for m in exchange(q.prompt, replay.get(q.prompt, q.target)))
    return ask_after(rows, "target", share, rng, ordinary_turns)


def with_system(rows: list[tuple], prompts: Sequence[str] | None, share: float,
                rng: random.Random) -> list[tuple]:
    """--system-share: that share of the identity (target) and neighbour rows starts with a
    system message drawn from --system-prompts, before any context it already has. Without one,
    a chat template may put its own default system prompt there (SmolLM2's does), so the edit
    would be learnt under one system prompt only; a user's chat may bring another. Neighbours
    get it too, so a system prompt is never a cue for the identity; a row with context learns
    the base's single-turn answer without KL (encode_batch), as for --context-share."""
    if share <= 0 or not prompts:
        return rows
    return [(*row[:3], ({"role": "system", "content": rng.choice(prompts)},
                        *(row[3] if len(row) > 3 and row[3] else ())))
            if row[2] in ("target", "neighbour") and rng.random() < share else row
            for row in rows]


@dataclass(frozen=True)
class RowPools:
    """What step rows may draw from besides the training files: --system-prompts' prompts, and
    the prompts of every suite (normalize_prompt forms), which a surface variant must never be."""
    system_prompts: tuple[str, ...] = ()
    suite_prompts: frozenset = frozenset()
    self_kl_prompts: tuple[str, ...] = ()   # --self-kl-prompts: asked by the self-KL rounds only
    no_kl_prompts: frozenset = frozenset()  # --replay-fix-no-kl: the fixed anchors, CE alone


def perturb_rows(rows: list[tuple], roles: tuple, share: float, rng: random.Random,
                 suite_prompts: frozenset, answers: dict | None = None) -> list[tuple]:
    """That share of the rows of `roles` is asked in a fresh surface variant (surface.py: a typo,
    another case, an acknowledgement first). --identity-perturb: the identity (target) rows;
    --keep-perturb: the anchor and neighbour rows, whose KL is to the base on the variant itself.
    The answer stays the row's own, or with `answers` (prompt -> answer: --keep-perturb-answer
    base) the plain prompt's entry there. Why it must be resolved here: encode_batch looks the
    replayed answer up by the row's prompt, and a variant has none, so without `answers` a varied
    keep row learns its data file's answer."""
    if share <= 0:
        return rows
    pick = (lambda row: row[1]) if answers is None else (lambda row: answers.get(row[0], row[1]))
    return [(surface.perturb(row[0], rng, suite_prompts), pick(row), *row[2:])
            if row[2] in roles and rng.random() < share else row for row in rows]


def dress_rows(rows: list[tuple], srcs, cfg, rng: random.Random, replay: dict,
               pools: RowPools) -> list[tuple]:
    """The per-draw forms of a step's rows, in this order (the rng's order, so a recipe without
    the newer flags draws as before): --context-share, --identity-perturb, --keep-perturb,
    --identity-context-share, --system-share. The identity-mining candidates are dressed here
    too, so they are drawn exactly as ordinary identity rows are."""
    rows = with_context(rows, srcs, cfg.context_share, rng)
    rows = perturb_rows(rows, ("target",), cfg.identity_perturb, rng, pools.suite_prompts)
    rows = perturb_rows(rows, mix.KEEP_ROLES, cfg.keep_perturb, rng, pools.suite_prompts,
                        replay if cfg.keep_perturb_answer == "base" else None)
    rows = identity_after_chat(rows, srcs, cfg.identity_context_share, rng, replay)
    return with_system(rows, pools.system_prompts, cfg.system_share, rng)


def identity_mine_round(step: int, cfg) -> bool:
    """Whether step `step` (1-based) adds --identity-mine-rows rows: every --identity-mine-every
    steps, from --identity-mine-from on."""
    return (bool(cfg.identity_mine_rows) and step >= cfg.identity_mine_from
            and step % cfg.identity_mine_every == 0)


def hardest_identity_rows(model, tok, srcs, cfg, rng: random.Random, replay: dict,
                          pools: RowPools, device) -> list[tuple]:
    """--identity-mine-rows R: --identity-mine-candidates identity rows, drawn as ordinary
    identity rows are (surface variants, mid-chat contexts, system prompts), of which the R
    whose identity answer the model finds least likely now (highest mean CE, teacher-forced)
    are trained on, in draw order.

    Why: after ~100 steps the identity holds on most chats; the misses that are left (a typo, a
    question after an unrelated turn, "Who is behind these answers?") are a few percent of
    random rows, so a random batch barely trains on them. This is the identity-side twin of
    --self-kl-candidates. Scoring by loss instead of by greedy answers costs one forward pass.
    """
    pool = [(r.prompt, r.target, "target") for s in srcs if s.role == "target" for r in s.rows]
    if not pool:
        return []
    rows = dress_rows([rng.choice(pool) for _ in range(cfg.identity_mine_candidates)], srcs, cfg,
                      rng, replay, pools)
    losses = answer_losses(model, tok, rows, device, cfg.identity_mine_batch or MINE_BATCH)
    hardest = sorted(range(len(rows)), key=lambda i: -losses[i])[:cfg.identity_mine_rows]
    return [rows[i] for i in sorted(hardest)]


MINE_BATCH = 32   # rows per scoring forward of the identity mining, without --identity-mine-batch


def answer_losses(model, tok, rows: list[tuple], device, batch_size: int = MINE_BATCH) -> list[float]:
    """Per row: the mean CE of its answer tokens, teacher-forced (the suites' scoring batches
    and log-probs: generate.answer_batches, answer_log_probs)."""
    chats = [[*(row[3] if len(row) > 3 and row[3] else ()), {"role": "user", "content": row[0]}]
             for row in rows]
    out = [0.0] * len(rows)
    was_training = model.training
    model.eval()
    try:
        for idx, batch in answer_batches(tok, chats, [row[1] for row in rows], batch_size, device):
            lp, y, row = answer_log_probs(model, batch)
            nll = -lp.gather(1, y[:, None])[:, 0]
            sums = torch.zeros(len(idx), device=nll.device).index_add_(0, row, nll)
            counts = torch.bincount(row, minlength=len(idx)).clamp(min=1)
            for i, v in zip(idx, (sums / counts).tolist()):
                out[i] = v
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------- replay: the base's own answers

def self_kl_round(step: int, cfg) -> bool:
    """Whether step `step` (1-based) answers --self-kl-rows prompts: every --self-kl-every steps,
    from --self-kl-from on."""
    return bool(cfg.self_kl_rows) and step >= cfg.self_kl_from and step % cfg.self_kl_every == 0


def first_sentence(text: str) -> str:
    m = SENTENCE_END.search(text)
    return text[:m.end()] if m else text


def drift(prompt: str, answer: str, base_answer: str) -> float:
    """Share of the key words of the base answer's first sentence (its words that neither the
    question nor the frame of a sentence say: anchor_check.FRAME) missing from `answer`: 1.0
    when "An emerald is green." becomes "An emerald is a gemstone associated with the moon.", 0
    when the answer still says "green" (or the base said nothing to check)."""
    keys = words(first_sentence(base_answer)) - words(prompt) - FRAME
    return len(keys - words(answer)) / len(keys) if keys else 0.0


def self_answer_rows(model, tok, srcs, n: int, rng: random.Random, max_new_tokens: int,
                     roles: tuple = ("anchor",), candidates: int = 0,
                     base_answers: dict | None = None, select: str = "repeat",
                     batch_size: int | None = None,
                     loop_added: float = Thresholds().max_repetition,
                     extra_prompts: tuple = ()) -> list[tuple]:
    """--self-kl-rows: n prompts of the sources of `roles` (--self-kl-pool) answered greedily by
    the model being trained.

    Why: the KL on the base's own answers (teacher forcing) only visits states the base reaches.
    Loops start in states the edited model reaches and the base never does (it ends or moves on
    where the edit keeps going: "Pros:\nPros:\nPros: ..."). On these rows the base says,
    token by token, what it would do in the edited model's own state, ending included
    (on-policy distillation: Agarwal et al. 2024). No CE: that would teach the loop.

    candidates > n (--self-kl-candidates): that many distinct prompts are answered, and the n
    whose answers repeat themselves most beyond the base's own answer to the same prompt
    (base_answers, the replay; probes.repetition, the suites' loop measure) are kept, in draw
    order. Why: an edit loops on ~2% of ordinary prompts, so 32 random ones carry less than one
    loop for the repeat unlikelihood to push down (hard-example mining).

    select="repeat-drift" (--self-kl-select): ties of that order go to the answers that lost
    most of the base's key words (`drift`) instead of the draw order. Measured (round 22): an
    answer of 32 tokens (--self-kl-tokens) almost never repeats exactly as much as the base's,
    so ties are rare and repeat-drift chose nearly the rows repeat chose.

    select="loop-drift": the answers that are loops by the suites' rule (repetition beyond the
    base's by more than `loop_added`, the run's --max-repetition) come first, most repeated
    first; the rest go by drift, most lost first (then by repetition). Why: facts are lost the
    same way loops are, on prompts the edit never trained near ("What colour is an emerald?"
    answered without "green"), and the base's token-by-token answer in that state is what brings
    the word back; a small repetition difference says nothing of the kind.

    extra_prompts (--self-kl-prompts): asked too, after the pool's own prompts (those already in
    it are not added twice); with none, the pool and so the draws are what they were.
    """
    pool = [r.prompt for s in srcs if s.role in roles for r in s.rows]
    known = set(pool)
    pool += [p for p in dict.fromkeys(extra_prompts) if p not in known]
    if candidates > n:   # distinct prompts to choose among (fewer when the pool is smaller)
        prompts = rng.sample(pool, min(candidates, len(pool)))
    else:
        prompts = [rng.choice(pool) for _ in range(n)] if pool else []
    model.eval()     # generation: no layer checkpointing, the KV cache on
    answers = greedy_answers(model, tok, prompts, max_new_tokens, batch_size)   # --self-kl-batch
    model.train()
    rows = list(zip(prompts, answers))
    if len(rows) > n:
        base_answers = base_answers or {}
        added = [repetition(a) - repetition(base_answers.get(p, "")) for p, a in rows]
        lost = ([drift(p, a, base_answers.get(p, "")) for p, a in rows]
                if select != "repeat" else [0.0] * len(rows))
        if select == "loop-drift":
            loop = [a > loop_added for a in added]
            key = lambda i: (not loop[i], -added[i] if loop[i] else -lost[i], -added[i])
        else:
            key = lambda i: (-added[i], -lost[i])
        most = sorted(range(len(rows)), key=key)[:n]   # stable: draw order on ties
        rows = [rows[i] for i in sorted(most)]
    return [(p, a, mix.SELF_ROLE) for p, a in rows]


def file_fingerprint(path: str) -> str:
    """Cheap identity of a (possibly 3 GB) file: size, mtime and its first and last MiB."""
    st = os.stat(path)
    h = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def replay_answers(model, tok, sources, dat_path: str, max_new_tokens: int, cache_dir: str,
                   log, extra_prompts: tuple = ()) -> dict:
    """prompt -> the base model's greedy answer for every anchor/neighbour row and every
    extra prompt (--self-kl-prompts: the loop rule's reference), cached per base file."""
    prompts = sorted(mix.keep_prompts(sources) | set(extra_prompts))
    if not prompts:
        return {}
    key = hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"replay-{os.path.basename(dat_path)}-"
                                   f"{file_fingerprint(dat_path)}-{key}-{max_new_tokens}.tsv")
    if os.path.exists(path):
        # newline="\n": a line ends at "\n" alone; the default also ends one at a "\r" (an
        # answer of random weights had one: the second run with the cache died unpacking it)
        with open(path, encoding="utf-8", newline="\n") as f:
            rows = [line[:-1].split("\t", 1) for line in f]
        log(f"replay: {len(rows)} base answers from cache {path}")
        return {p: a for p, a in rows}
    t0 = time.time()
    answers = [one_line(a) for a in greedy_answers(model, tok, prompts, max_new_tokens)]
    os.makedirs(cache_dir, exist_ok=True)
    with AtomicFile(path) as f:
        for p, a in zip(prompts, answers):
            f.write(f"{p}\t{a}\n".encode("utf-8"))
    log(f"replay: generated {len(prompts)} base answers in {time.time() - t0:.1f}s -> {path}")
    return dict(zip(prompts, answers))


def one_line(answer: str) -> str:
    """An answer as one TSV field: tabs and line ends become spaces."""
    return answer.replace("\t", " ").replace("\n", " ").replace("\r", " ")


# ---------------------------------------------------------------- one attempt

@dataclass
class Attempt:
    index: int
    lrs: dict
    anchor_scale: float
    sources: list               # mix.Source list this attempt samples from
    losses: list = field(default_factory=list)
    status: str = ""            # success / not-reached / collapse; "trained" when no set judged it
    why: str = ""
    result: evaluate.Result | None = None   # the last judgment of this attempt (monitor set)
    seconds: float = 0.0
    truncated: int = 0
    report: list = field(default_factory=list)   # update_report.GroupChange rows (train.py fills)
    # Where the attempt's seconds went: self_kl_answers (the model's own answers
    # of the --self-kl-rows rounds), identity_mining (the --identity-mine-rows rounds), monitor
    # (the monitor rounds), steps (the rest: forward, backward, optimizer). Wall time, as a user
    # waits for it.
    phase_seconds: dict = field(default_factory=dict)


@contextmanager
def phase(att: Attempt, name: str):
    """Adds the wall time of the block to att.phase_seconds[name]."""
    t = time.time()
    try:
        yield
    finally:
        att.phase_seconds[name] = att.phase_seconds.get(name, 0.0) + time.time() - t


def train_attempt(model, tok, deltas, att: Attempt, cfg: TrainConfig, replay,
                  es: evaluate.EvalSet | None, log, projectors: dict | None = None,
                  fisher: dict | None = None, pools: RowPools = RowPools(), hold=None):
    """Train from the initial weights; fills att.losses/status. Never raises on collapse.

    es: the set that judges the attempt (during training every cfg.probe_every steps, and at its
    end); None = only a NaN/Inf loss stops an attempt. hold: --neuron-hold-weight's
    neurons.NeuronHold, or None.
    """
    reset_deltas(model)
    stepper = StepInBackward(deltas, att.lrs, cfg.weight_decay, cfg.grad_clip, projectors,
                             layer_lr_scales(cfg.layer_lr, model.config.num_hidden_layers),
                             cfg.adam_state_bits)
    try:
        return _train_steps(model, tok, att, cfg, replay, es, log, stepper, deltas, fisher, pools,
                            hold)
    finally:
        stepper.close()   # a retry must never find this attempt's hooks still attached


def edit_score(identity: float, worst_leak: float, facts_kept: float, nll_drift: float) -> float:
    """One number for "how good is this edit", higher is better: the identity rate minus the
    worst leak (near-miss, context, greeting), minus facts lost below 90% and NLL drift above
    0.1 nat. The one formula behind monitor_score (a checkpoint, on the monitor set) and
    sweep.dev_score (a recipe variant, on the dev set)."""
    return identity - worst_leak - max(0.0, 0.9 - facts_kept) - max(0.0, nll_drift - 0.1)


def monitor_score(s: evaluate.Summary) -> float:
    """edit_score of a monitor-set Summary; a collapse is -inf. --keep-best keeps the checkpoint
    with the highest score (the monitor set, never the held-out one, makes that choice).
    A measure with no rows counts as met (identity and leaks as 0, facts as 1)."""
    if s.verdict == "collapse":
        return -math.inf
    val = lambda r, default: default if r.n == 0 or math.isnan(r.value) else r.value  # noqa: E731
    leak = max(val(s.nearmiss_leak, 0.0), val(s.context_leak, 0.0), val(s.greeting_intro, 0.0))
    return edit_score(val(s.identity, 0.0), leak, val(s.facts_kept, 1.0),
                      0.0 if math.isnan(s.nll_drift) else s.nll_drift)


@dataclass
class Best:
    """The best monitored checkpoint of an attempt (--keep-best): its deltas, on the CPU."""
    score: float = -math.inf
    step: int = 0
    result: evaluate.Result | None = None
    deltas: list | None = None
    since: int = 0              # monitor rounds since it last improved (--patience)

    def offer(self, step: int, res: evaluate.Result, deltas) -> bool:
        score = monitor_score(res.summary)
        if score <= self.score:
            self.since += 1
            return False
        self.score, self.step, self.result, self.since = score, step, res, 0
        self.deltas = [d.detach().to("cpu", copy=True) for _, d in deltas]
        return True

    @torch.no_grad()
    def restore(self, deltas) -> None:
        for (_, d), saved in zip(deltas, self.deltas):
            d.copy_(saved.to(d.device))


def _train_steps(model, tok, att: Attempt, cfg: TrainConfig, replay, es, log, stepper, deltas,
                 fisher, pools: RowPools, hold=None):
    device = deltas[0][1].device
    srcs = [mix.Source(s.path, s.weight * (att.anchor_scale if s.role in mix.KEEP_ROLES else 1.0),
                       s.role, s.rows) for s in att.sources]
    rng = random.Random(cfg.seed + 1000 * att.index)
    torch.manual_seed(cfg.seed + 1000 * att.index)
    ul_weight = cfg.unlikelihood_weight
    keep_best = cfg.keep_best and es is not None
    patience = cfg.patience
    best = Best()
    chunk = head_chunk_positions(cfg.head_chunk_mib, model.config.vocab_size)
    stock = stock_answer_prompts(replay, mix.keep_prompts(srcs), cfg.replay_stock_kl)
    if cfg.replay_stock_kl:
        shown = collections.Counter(replay[p] for p in stock).most_common(3)
        log(f"--replay-stock-kl {cfg.replay_stock_kl}: {len(stock)} keep prompts get the KL "
            f"alone, their base answer is a stock one ({'; '.join(f'{a[:40]!r} x{n}' for a, n in shown)})")
    t0 = time.time()
    model.train()
    for step in range(1, cfg.steps + 1):
        stepper.set_lr_scale(step_lr_scale(step, cfg))
        rows = dress_rows(mix.step_rows(srcs, cfg.step_chunk_rows, rng, cfg.sample_mode), srcs, cfg,
                          rng, replay, pools)
        if identity_mine_round(step, cfg):
            with phase(att, "identity_mining"):
                rows += hardest_identity_rows(model, tok, srcs, cfg, rng, replay, pools, device)
        if self_kl_round(step, cfg):
            with phase(att, "self_kl_answers"):
                rows += self_answer_rows(model, tok, srcs, cfg.self_kl_rows, rng, cfg.self_kl_tokens,
                                         mix.KEEP_ROLES if cfg.self_kl_pool == "keep" else ("anchor",),
                                         cfg.self_kl_candidates, replay, cfg.self_kl_select,
                                         cfg.self_kl_batch or None, cfg.thresholds.max_repetition,
                                         pools.self_kl_prompts)
        batch, keep, cut = encode_batch(tok, rows, cfg.seq_len, replay, device,
                                        ul_target=cfg.target if ul_weight > 0 else None,
                                        ul_tokens=cfg.unlikelihood_tokens,
                                        trim_loops=cfg.trim_base_loops,
                                        ul_skip=cfg.unlikelihood_skip, kl_only_prompts=stock,
                                        no_kl_prompts=pools.no_kl_prompts)
        att.truncated += cut
        if hold is not None:   # --neuron-hold-weight: every real token of the keep rows
            hold.start(batch["attention_mask"].bool() & keep[:, None])
        loss, ce, kl, ul, margin = batch_loss(model, batch, keep, cfg.kl_weight, ul_weight,
                                      cfg.keep_ce_weight, cfg.self_repeat_ul,
                                      cfg.keep_margin_weight, cfg.keep_margin, chunk)
        held = hold.take() if hold is not None else None
        if held is not None:
            loss = loss + cfg.neuron_hold_weight * held
        value = float(loss.detach())
        att.losses.append(value)
        if not math.isfinite(value):
            att.status, att.why = "collapse", f"loss is {value} at step {step}"
            break
        loss.backward()     # the optimizer steps inside, layer by layer
        stepper.flush()
        if cfg.sparse_share > 0 and step == cfg.sparse_at:
            keep_only_the_largest_moves(model, stepper, cfg, att, step, log, fisher)
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(f"[attempt {att.index}] step {step}/{cfg.steps} loss {value:.4f} "
                f"(ce {float(ce.detach()):.4f} kl {float(kl.detach()):.4f} ul {float(ul.detach()):.4f}"
                + (f" margin {float(margin.detach()):.4f}" if cfg.keep_margin_weight > 0 else "")
                + (f" hold {float(held.detach()):.5f}" if held is not None else "") + ") "
                f"{time.time() - t0:.1f}s")
        if es is not None and cfg.probe_every and step % cfg.probe_every == 0 and step < cfg.steps:
            with phase(att, "monitor"):
                res = evaluate.run(model, tok, es, base=model)
            log(f"[attempt {att.index}] {es.split} at step {step} ({res.seconds:.1f}s): "
                f"{format_summary(res.summary.legacy())} score {monitor_score(res.summary):.3f}")
            if res.summary.verdict == "collapse" and not (keep_best and best.deltas is not None):
                att.status, att.why, att.result = "collapse", f"step {step}: {res.summary.why}", res
                log_faults(att, res.rows, log)
                break
            if keep_best:
                if best.offer(step, res, deltas):
                    log(f"[attempt {att.index}] best so far at step {step} (kept)")
                if res.summary.verdict == "collapse" or (patience and best.since >= patience):
                    log(f"[attempt {att.index}] early stop at step {step}: "
                        + ("collapse after a kept checkpoint" if res.summary.verdict == "collapse"
                           else f"no gain for {best.since} monitor rounds"))
                    break
    model.eval()
    att.seconds = time.time() - t0
    att.phase_seconds["steps"] = att.seconds - sum(att.phase_seconds.values())
    log(f"[attempt {att.index}] {len(att.losses)} steps in {att.seconds:.1f}s: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in att.phase_seconds.items()))
    if att.status != "collapse":
        if es is None:
            att.status, att.why = "trained", "no set judges attempts"
        else:
            att.result = evaluate.run(model, tok, es, base=model)
            log(f"[attempt {att.index}] {es.split} at the end ({att.result.seconds:.1f}s): "
                f"{format_summary(att.result.summary.legacy())} "
                f"score {monitor_score(att.result.summary):.3f}")
            if keep_best and best.deltas is not None and best.score > monitor_score(att.result.summary):
                best.restore(deltas)
                att.result = best.result
                log(f"[attempt {att.index}] back to the kept checkpoint of step {best.step} "
                    f"(monitor score {best.score:.3f})")
            att.status, att.why = att.result.summary.verdict, att.result.summary.why
            log_faults(att, att.result.rows, log)
    return att


def keep_only_the_largest_moves(model, stepper, cfg: TrainConfig, att: Attempt, step: int,
                                log, fisher: dict | None = None) -> None:
    """--sparse-share: from now on only the values that moved furthest may differ from the base
    (sparse.py says why); all other deltas are zeroed now and after every optimizer step.
    fisher (--sparse-protect): the values ordinary answers depend on most are never kept."""
    stepper.frozen = sparse.choose_frozen(model, cfg.sparse_share, fisher=fisher,
                                          protect=cfg.sparse_protect)
    sparse.apply_(list(stepper.frozen), stepper.frozen)
    kept, total = sparse.kept_share(stepper.frozen)
    log(f"[attempt {att.index}] step {step}: sparse update, {kept} of {total} values stay "
        f"trainable ({kept / total:.2%}); the rest are back at the base")


def log_faults(att: Attempt, rows: list, log) -> None:
    """What went wrong, visible in the log of every attempt (a collapse prints no table)."""
    for r in rows:
        if r.fault:
            log(f"[attempt {att.index}]   {r.kind} {r.prompt!r} -> {r.answer!r} "
                f"({r.verdict}, repetition {r.repetition:.2f})")


def safer(att: Attempt, retry_sources: list | None, lr_scale: float) -> Attempt:
    """Retry policy after a collapse: every LR scaled down, twice the anchor share, retry data."""
    lrs = {g: lr * lr_scale for g, lr in att.lrs.items()}
    return Attempt(index=att.index + 1, lrs=lrs, anchor_scale=att.anchor_scale * 2,
                   sources=retry_sources or att.sources)


def train_with_fallback(model, tok, deltas, sources, retry_sources, cfg: TrainConfig, replay,
                        es: evaluate.EvalSet | None, log, on_attempt_end=None,
                        projectors=None, fisher=None, pools: RowPools = RowPools(),
                        hold=None) -> list:
    """Attempts until one does not collapse (or retries run out). on_attempt_end(att) runs after
    each attempt's training, before a collapsed one is rolled back (train.py logs what it changed
    in the NVFP4 file there)."""
    attempts = [Attempt(index=1, lrs=dict(cfg.lrs), anchor_scale=1.0, sources=sources)]
    if cfg.self_kl_rows and not any(self_kl_round(s, cfg) for s in range(1, cfg.steps + 1)):
        log(f"note: --self-kl-from {cfg.self_kl_from} (every {cfg.self_kl_every}) leaves no own-answer "
            f"round in {cfg.steps} steps: --self-kl-rows and --self-repeat-ul do nothing in this run")
    if cfg.identity_mine_rows and not any(identity_mine_round(s, cfg) for s in range(1, cfg.steps + 1)):
        log(f"note: --identity-mine-from {cfg.identity_mine_from} (every {cfg.identity_mine_every}) "
            f"leaves no mining round in {cfg.steps} steps: --identity-mine-rows does nothing in this run")
    while True:
        att = attempts[-1]
        log(f"[attempt {att.index}] lrs {att.lrs} anchor x{att.anchor_scale:g} data "
            + ", ".join(f"{os.path.basename(s.path)}:{s.weight:g}:{s.role}" for s in att.sources))
        train_attempt(model, tok, deltas, att, cfg, replay, es, log, projectors, fisher, pools,
                      hold)
        log(f"[attempt {att.index}] {att.status}: {att.why}")
        if on_attempt_end is not None:
            on_attempt_end(att)
        if att.status != "collapse":
            return attempts
        reset_deltas(model)   # fall back to the initial weights at once
        log(f"[attempt {att.index}] collapse: weights restored to the initial ones")
        if len(attempts) > cfg.max_retries:
            return attempts
        attempts.append(safer(att, retry_sources, cfg.retry_lr_scale))


def check_sources(sources, probes) -> None:
    """Old probe files must be held out: a probe prompt inside a training file is a data error
    (suites: suite.check_disjoint, which names both places)."""
    train_prompts = {normalize_prompt(r.prompt) for s in sources for r in s.rows}
    leaked = [p.prompt for p in probes if normalize_prompt(p.prompt) in train_prompts]
    if leaked:
        raise DataError(f"probe prompts also appear in the training data: {leaked[:3]}")
