"""The built-in proxy: a small Qwen3 (real architecture, real tokenizer and vocab) that stands in
for Qwen3-4B-Instruct-2507 when its weights are absent.

It is trained from scratch on data/proxy-knowledge-*.tsv (identity questions -> "我是通義千問…",
ordinary questions -> fixed answers) quantization-aware: every projection is fake-quantized to
NVFP4 in the forward pass (STE), so the exported `.dat` answers like the trained model.
Speed on 2 cores: the loss uses only the vocabulary rows that occur in the corpus (the other
151k rows keep their small random init, so their logits stay near 0 and are never chosen).
"""
import random
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import Qwen3Config, Qwen3ForCausalLM

from . import chat, ops
from .convert import conversion_plan, dat_entries
from .dat import write_dat
from .tsv import read_tsv


def proxy_config(tok) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=151936, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        rope_theta=5000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=tok.pad_token_id,
    )


class FakeQuantSTE(nn.Module):
    """Parametrization: forward sees fake_quantize(w), the gradient reaches w unchanged."""

    def forward(self, w):
        return w + (ops.fake_quantize(w) - w).detach()


def encode_corpus(tok, rows, seq_len=96):
    return [chat.encode_row(tok, r.prompt, r.target, seq_len)[:2] for r in rows]


def train_proxy(data_path: str, steps: int, seed: int, log=print, batch_rows=32, lr=3e-3):
    tok = chat.load_tokenizer(None)
    rows = read_tsv(data_path)
    enc = encode_corpus(tok, rows)
    torch.manual_seed(seed)
    cfg = proxy_config(tok)
    model = Qwen3ForCausalLM(cfg)
    for mod in model.model.layers.modules():
        if isinstance(mod, nn.Linear):
            parametrize.register_parametrization(mod, "weight", FakeQuantSTE())
    used = sorted({t for ids, _ in enc for t in ids})          # corpus vocabulary, [U]
    remap = torch.full((cfg.vocab_size,), -100, dtype=torch.long)
    remap[torch.tensor(used)] = torch.arange(len(used))
    used_t = torch.tensor(used)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    pad = tok.pad_token_id
    t0 = time.time()
    model.train()
    for step in range(1, steps + 1):
        batch = chat.collate([enc[i] for i in rng.sample(range(len(enc)), min(batch_rows, len(enc)))], pad)
        h = model.model(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).last_hidden_state
        y = batch["labels"][:, 1:]
        sel = y != -100
        w_out = ops.fake_quantize(model.lm_head.weight[used_t])  # tied lm_head, NVFP4 in the file
        w_out = model.lm_head.weight[used_t] + (w_out - model.lm_head.weight[used_t]).detach()
        logits = h[:, :-1][sel] @ w_out.t()                       # [n, U]
        loss = F.cross_entropy(logits, remap[y[sel]])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps:
            log(f"proxy step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s")
    for mod in model.model.layers.modules():
        if isinstance(mod, nn.Linear):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
    model.eval()
    return model, tok, rows


def export_proxy(model, out_dat: str) -> None:
    """Write the proxy through the same converter rules as a real checkpoint."""
    state = dict(model.state_dict())
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    plan = conversion_plan(model.config)
    write_dat(out_dat, dat_entries(plan, lambda name: state[name].detach()))
