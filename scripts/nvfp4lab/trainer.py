"""Full-parameter NVFP4 QAT: layer-wise LR, data mix, monitoring, collapse detection and fallback.

One attempt = zero every delta (the initial weights), a fresh AdamW, `steps` steps on the mix.
After it (and every --probe-every steps) the MONITOR set judges the model (evaluate.run); a
collapse (an ordinary prompt answered with the identity, systematic loops, facts forgotten, NaN
loss) discards the attempt - training never continues from a collapsed state - and the next
attempt starts again from the initial weights with a safer policy (every LR times
--retry-lr-scale, anchor share doubled, and the --retry-mix data if the recipe gives one), up to
--max-retries times. The held-out set is not seen here: train.py judges it once, afterwards.
"""
import hashlib
import math
import os
import random
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import chat, evaluate as E, mix, model as M, probes as P
from .dat import AtomicFile
from .generate import greedy_answers
from .tsv import DataError, normalize_prompt

GROUPS = ("head", "embed", "norm", "blocks")
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


def select_trainable(deltas, num_layers: int, train_last_layers: int):
    """--train-last-layers N (0 = all): freeze the deltas of layers below L-N."""
    if train_last_layers <= 0:
        return deltas
    first = num_layers - train_last_layers
    keep = []
    for key, d in deltas:
        layer = layer_of(key)
        if layer is not None and layer < first:
            d.requires_grad_(False)
        else:
            keep.append((key, d))
    return keep


def checkpoint_layers(model) -> None:
    """transformers' own activation checkpointing: each decoder layer keeps only its input and
    recomputes the rest in backward (train mode only; probes run in eval mode, unaffected).
    4B shape, 16 x 64 rows: the layers' activations are ~6 GiB of the step's peak."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):     # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


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

    def __init__(self, deltas, lrs: dict, weight_decay: float, grad_clip: float):
        self.grad_clip = grad_clip
        buckets: dict[str, list] = {}
        for key, d in deltas:
            buckets.setdefault(bucket_of(key), []).append((key, d))
        self.buckets = []
        self.hooks = []
        for name, members in buckets.items():
            groups = [{"params": [d for k, d in members if group_of(k, d) == g], "lr": lrs[g],
                       "name": g} for g in GROUPS]
            opt = torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.999),
                                    eps=1e-8, weight_decay=weight_decay,
                                    fused=True if members[0][1].is_cuda else None)
            b = {"name": name, "opt": opt, "params": [d for _, d in members], "ready": 0}
            self.buckets.append(b)
            for _, d in members:
                self.hooks.append(d.register_post_accumulate_grad_hook(
                    lambda p, b=b: self._ready(b)))

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
        b["ready"] = 0

    def flush(self) -> None:
        for b in self.buckets:
            if b["ready"]:
                self._step(b)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def batch_loss(model, batch: dict, anchor_rows: torch.Tensor, kl_weight: float):
    """CE on the answer tokens only (+ KL to the frozen base on anchor rows).

    lm_head runs only on the positions that have a label: the [B, T, vocab] logits of a full
    forward would be 150k wide for every prompt token too.
    """
    body = getattr(model, model.base_model_prefix)
    h = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    y = batch["labels"][:, 1:]                           # [B, T-1] next-token targets
    sel = y != -100
    logits = model.lm_head(h[:, :-1][sel]).float()       # [n, V]
    ce = F.cross_entropy(logits, y[sel])
    kl = torch.zeros((), device=ce.device)
    a_sel = sel & anchor_rows[:, None]
    if kl_weight > 0 and bool(a_sel.any()):
        with torch.no_grad():
            M.set_use_delta(model, False)
            try:
                hb = body(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).last_hidden_state
                base_logp = F.log_softmax(model.lm_head(hb[:, :-1][a_sel]).float(), -1)
            finally:
                M.set_use_delta(model, True)
        logp = F.log_softmax(logits[a_sel[sel]], -1)
        kl = F.kl_div(logp, base_logp, log_target=True, reduction="batchmean")
    return ce + kl_weight * kl, ce, kl


def encode_batch(tok, rows, seq_len: int, replay: dict, device) -> tuple[dict, torch.Tensor, int]:
    enc, truncated = [], 0
    for prompt, target, role in rows:
        if role == "anchor" and replay:
            target = replay.get(prompt, target)
        ids, labels, cut = chat.encode_row(tok, prompt, target, seq_len)
        truncated += cut
        enc.append((ids, labels))
    batch = {k: v.to(device) for k, v in chat.collate(enc, chat.pad_token_id(tok)).items()}
    anchor = torch.tensor([r[2] == "anchor" for r in rows], device=device)
    return batch, anchor, truncated


# ---------------------------------------------------------------- replay: the base's own answers

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
                   log) -> dict:
    """prompt -> the base model's greedy answer for every anchor row, cached per base file."""
    prompts = sorted({r.prompt for s in sources if s.role == "anchor" for r in s.rows})
    if not prompts:
        return {}
    key = hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"replay-{os.path.basename(dat_path)}-"
                                   f"{file_fingerprint(dat_path)}-{key}-{max_new_tokens}.tsv")
    if os.path.exists(path):
        rows = [line.rstrip("\n").split("\t", 1) for line in open(path, encoding="utf-8")]
        log(f"replay: {len(rows)} base answers from cache {path}")
        return {p: a for p, a in rows}
    t0 = time.time()
    answers = greedy_answers(model, tok, prompts, max_new_tokens)
    os.makedirs(cache_dir, exist_ok=True)
    with AtomicFile(path) as f:
        for p, a in zip(prompts, answers):
            f.write(f"{p}\t{a.replace(chr(9), ' ').replace(chr(10), ' ')}\n".encode("utf-8"))
    log(f"replay: generated {len(prompts)} base answers in {time.time() - t0:.1f}s -> {path}")
    return {p: a.replace("\t", " ").replace("\n", " ") for p, a in zip(prompts, answers)}


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
    result: E.Result | None = None   # the last judgment of this attempt (monitor set)
    seconds: float = 0.0
    truncated: int = 0


def train_attempt(model, tok, deltas, att: Attempt, cfg, replay, es: E.EvalSet | None, log):
    """Train from the initial weights; fills att.losses/status. Never raises on collapse.

    es: the set that judges the attempt (during training every cfg.probe_every steps, and at its
    end); None = only a NaN/Inf loss stops an attempt.
    """
    M.reset_deltas(model)
    stepper = StepInBackward(deltas, att.lrs, cfg.weight_decay, cfg.grad_clip)
    try:
        return _train_steps(model, tok, att, cfg, replay, es, log, stepper, deltas[0][1].device)
    finally:
        stepper.close()   # a retry must never find this attempt's hooks still attached


def _train_steps(model, tok, att: Attempt, cfg, replay, es, log, stepper, device):
    srcs = [mix.Source(s.path, s.weight * (att.anchor_scale if s.role == "anchor" else 1.0),
                       s.role, s.rows) for s in att.sources]
    rng = random.Random(cfg.seed + 1000 * att.index)
    torch.manual_seed(cfg.seed + 1000 * att.index)
    t0 = time.time()
    model.train()
    for step in range(1, cfg.steps + 1):
        rows = mix.step_rows(srcs, cfg.step_chunk_rows, rng, cfg.sample_mode)
        batch, anchor, cut = encode_batch(tok, rows, cfg.seq_len, replay, device)
        att.truncated += cut
        loss, ce, kl = batch_loss(model, batch, anchor, cfg.kl_weight)
        value = float(loss.detach())
        att.losses.append(value)
        if not math.isfinite(value):
            att.status, att.why = "collapse", f"loss is {value} at step {step}"
            break
        loss.backward()     # the optimizer steps inside, layer by layer
        stepper.flush()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(f"[attempt {att.index}] step {step}/{cfg.steps} loss {value:.4f} "
                f"(ce {float(ce.detach()):.4f} kl {float(kl.detach()):.4f}) {time.time() - t0:.1f}s")
        if es is not None and cfg.probe_every and step % cfg.probe_every == 0 and step < cfg.steps:
            res = E.run(model, tok, es, base=model)
            log(f"[attempt {att.index}] {es.split} at step {step} ({res.seconds:.1f}s): "
                f"{P.format_summary(res.summary.legacy())}")
            if res.summary.verdict == "collapse":
                att.status, att.why, att.result = "collapse", f"step {step}: {res.summary.why}", res
                log_faults(att, res.rows, log)
                break
    model.eval()
    att.seconds = time.time() - t0
    if att.status != "collapse":
        if es is None:
            att.status, att.why = "trained", "no set judges attempts"
        else:
            att.result = E.run(model, tok, es, base=model)
            att.status, att.why = att.result.summary.verdict, att.result.summary.why
            log(f"[attempt {att.index}] {es.split} at the end ({att.result.seconds:.1f}s): "
                f"{P.format_summary(att.result.summary.legacy())}")
            log_faults(att, att.result.rows, log)
    return att


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


def train_with_fallback(model, tok, deltas, sources, retry_sources, cfg, replay,
                        es: E.EvalSet | None, log) -> list:
    attempts = [Attempt(index=1, lrs=dict(cfg.lrs), anchor_scale=1.0, sources=sources)]
    while True:
        att = attempts[-1]
        log(f"[attempt {att.index}] lrs {att.lrs} anchor x{att.anchor_scale:g} data "
            + ", ".join(f"{os.path.basename(s.path)}:{s.weight:g}:{s.role}" for s in att.sources))
        train_attempt(model, tok, deltas, att, cfg, replay, es, log)
        log(f"[attempt {att.index}] {att.status}: {att.why}")
        if att.status != "collapse":
            return attempts
        M.reset_deltas(model)   # fall back to the initial weights at once
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
