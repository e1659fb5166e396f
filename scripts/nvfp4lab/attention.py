"""The decoders' attention: transformers' own SDPA path, except for one-query steps on CUDA, which
go to ops.decode_attention (cuda/decode_attention.cu).

Why: in a decode step with an explicit mask (the static-cache decoders' 4D additive mask),
transformers' SDPA path repeats every KV head for its query heads (two cache copies a layer) and
runs the general memory-efficient kernel over every cache column, written or not. On the 4B shape
that was ~27% of a compiled decode step's GPU time (bench.py --profile). The kernel reads the
grouped cache in place and skips the masked columns.

Registered with transformers' AttentionInterface under NAME; `decode_attention(model)` switches
a model to it for the duration of a decode call and back (its masks are SDPA's). Everything that
is not a one-query step on CUDA with a supported shape (prefill, training, the CPU, other head
sizes, bool masks, sliding windows, soft-capping, sinks) goes to SDPA unchanged.
"""
import sys
from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import ops

NAME = "nvfp4_decode"
_refused: list = []   # the first refusal, reported once


def _kernel_mask(attention_mask, query, kv_len: int):
    """The [B or 1, L] additive mask the kernel takes, or False when this mask does not fit it."""
    if attention_mask is None:
        return None
    m = attention_mask
    if (m.dim() != 4 or m.dtype != query.dtype or m.shape[1] != 1 or m.shape[2] != 1
            or m.shape[0] not in (1, query.shape[0]) or m.shape[3] < kv_len):
        return False
    return m[:, 0, 0, :kv_len]


def decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query [B, Hq, q, D], key/value [B, Hkv, L, D]
    -> ([B, q, Hq, D], None)."""
    d = query.shape[-1]
    plain = (query.is_cuda and query.shape[2] == 1 and dropout == 0.0 and d <= 256
             and key.dtype == query.dtype and kwargs.get("sliding_window") is None
             and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
             and not kwargs.get("output_attentions", False))
    mask = _kernel_mask(attention_mask, query, key.shape[2]) if plain else False
    if mask is False:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else d ** -0.5
    out = ops.decode_attention(query[:, :, 0], key, value, mask, scale)   # [B, Hq, D]
    return out.unsqueeze(1), None


AttentionInterface.register(NAME, decode_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def decode_attention(model, enabled: bool = True):
    """The model's attention is decode_sdpa inside the block (when enabled and the model is on
    CUDA), its own again after. A CUDA graph captured inside keeps the kernel it captured."""
    before = model.config._attn_implementation
    on = enabled and model.get_input_embeddings().weight.is_cuda and before == "sdpa"
    if on:
        try:
            model.set_attn_implementation(NAME)
        except (ValueError, KeyError) as e:   # a transformers that refuses a registered name
            on = False
            if not _refused:
                _refused.append(e)
                print(f"note: decode attention off, SDPA used ({type(e).__name__}: {e})", file=sys.stderr)
    try:
        yield
    finally:
        if on:
            model.set_attn_implementation(before)


__all__ = ["NAME", "decode_sdpa", "decode_attention"]
