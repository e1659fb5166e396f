"""The built-in proxy: a small Qwen3 (real architecture, real tokenizer and vocab) that stands in
for Qwen3-4B-Instruct-2507 when its weights are absent.

It is trained from scratch on data/proxy-knowledge-*.tsv (identity questions -> "我是通義千問…",
ordinary questions -> fixed answers) quantization-aware: every projection is fake-quantized to
NVFP4 in the forward pass (STE: the trainer's own model.QATLinearFn), so the exported `.dat`
answers like the trained model.
Speed on 2 cores: training runs on a compact vocabulary, the ~2k tokens that occur in the corpus
(ids remapped); at export those rows are scattered into the full 151,936-row embedding, whose
other rows keep a small random init (their logits stay near 0, so they are never chosen).
"""
import random
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM

from . import chat
from .convert import conversion_plan, dat_entries, entry_count
from .dat import write_dat
from .model import QATLinearFn
from .tsv import read_tsv


def proxy_config(tok, vocab_size=151936) -> Qwen3Config:
    full = vocab_size == 151936   # the compact training vocab has no room for the special ids
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        rope_theta=5000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=151643 if full else None, eos_token_id=151645 if full else None,
        pad_token_id=tok.pad_token_id if full else None,
    )


def qat_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ fake_quantize(w).T; the gradient reaches w unchanged (STE). No stored base: the proxy
    trains its float weights from scratch."""
    return QATLinearFn.apply(x, None, None, w)


def encode_corpus(tok, rows, seq_len=96):
    return [chat.encode_row(tok, r.prompt, r.target, seq_len)[:2] for r in rows]


def train_proxy(data_path: str, steps: int, seed: int, log=print, batch_rows=32, lr=3e-3):
    """Train on the compact vocabulary; returns (full-vocab model, tokenizer, corpus rows)."""
    tok = chat.load_tokenizer(None)
    rows = read_tsv(data_path)
    enc = encode_corpus(tok, rows)
    used = sorted({t for ids, _ in enc for t in ids} | {tok.pad_token_id})   # [U] token ids
    remap = torch.full((151936,), -100, dtype=torch.long)
    remap[torch.tensor(used)] = torch.arange(len(used))
    enc = [(remap[torch.tensor(ids)].tolist(), [-100 if t == -100 else int(remap[t]) for t in lab])
           for ids, lab in enc]
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(proxy_config(tok, vocab_size=len(used)))
    # Every projection and the tied lm_head (below) are NVFP4 in the file.
    projections = [m for m in model.modules()
                   if isinstance(m, nn.Linear) and m is not model.lm_head]
    for mod in projections:
        mod.forward = lambda x, mod=mod: qat_linear(x, mod.weight)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    pad = int(remap[tok.pad_token_id])
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        pick = rng.sample(range(len(enc)), min(batch_rows, len(enc)))
        batch = chat.collate([enc[i] for i in pick], pad)
        h = model.model(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).last_hidden_state
        y = batch["labels"][:, 1:]
        sel = y != -100
        # NVFP4 lm_head (tied to the embedding), on the answer positions only
        loss = F.cross_entropy(qat_linear(h[:, :-1][sel], model.lm_head.weight), y[sel])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps:
            log(f"proxy step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    for mod in projections:
        del mod.forward   # back to nn.Linear's own: the float weights are what export quantizes
    return widen_vocab(model, tok, used, seed), tok, rows


@torch.no_grad()
def widen_vocab(small, tok, used: list[int], seed: int):
    """Scatter the compact embedding into a full-vocab model (other rows: N(0, 0.02) init)."""
    model = Qwen3ForCausalLM(proxy_config(tok))
    state = {k: v for k, v in small.state_dict().items() if "embed_tokens" not in k
             and not k.startswith("lm_head")}
    g = torch.Generator().manual_seed(seed + 1)
    emb = torch.randn(model.config.vocab_size, model.config.hidden_size, generator=g) * 0.02
    emb[torch.tensor(used)] = small.model.embed_tokens.weight
    state["model.embed_tokens.weight"] = emb
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.eval()
    return model


def export_proxy(model, out_dat: str) -> None:
    """Write the proxy through the same converter rules as a real checkpoint."""
    state = dict(model.state_dict())
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    plan = conversion_plan(model.config)
    write_dat(out_dat, dat_entries(plan, lambda name: state[name].detach()), entry_count(plan))
