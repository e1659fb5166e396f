"""The runners' generation: one answer, timed per step, and its [time] / out lines.

Greedy turns with a KV cache go through decode.StaticDecoder (a CUDA graph per step on the GPU);
everything the original runners also offer (sampling, logits output, token-by-token prefill, no
cache at all) goes through transformers' `generate`. Batched greedy answers for suites are
generate.py's job, not this one's: a runner answers one chat at a time.
"""
import os
import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .chat import EndTokens, end_tokens
from .decode import StaticDecoder, cache_arg


@dataclass
class Generation:
    ids: list              # new tokens, cut before the first stop token (unless ignore_eos)
    logits: torch.Tensor   # [steps, vocab] float32 raw logits when asked for, else None
    total_s: float
    prefill_s: float       # prompt forward + first token
    decode_s: list         # one entry per later token


class _StepClock:
    """A transformers streamer that only timestamps: put() gets the prompt once, then each token."""

    def __init__(self):
        self.prompt_seen = False
        self.stamps = []

    def put(self, value):
        if self.prompt_seen:
            self.stamps.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


def prefill_token_by_token(model, ids: list[int], cache):
    """Feed ids one at a time into the KV cache (the original's `tbt` prefill mode).

    Through the decoder alone: these positions need no logits, and the lm_head is the largest
    matmul of a decode step (vocab 151936).
    """
    cache = cache if cache is not None else DynamicCache(config=model.config)
    dev = next(model.parameters()).device
    decoder = model.get_decoder()
    kw = {cache_arg(decoder): cache}
    with torch.no_grad():
        for t in ids[cache.get_seq_length():]:
            decoder(input_ids=torch.tensor([[t]], device=dev), use_cache=True, **kw)
    return cache


def generate(model, tok, context_ids: list[int], max_new_tokens: int, *, use_cache=True,
             cache=None, token_by_token=False, temp=0.0, top_p=1.0, seed=123, ignore_eos=False,
             output_logits=False, decoder: StaticDecoder | None = None,
             reuse_prefix=False) -> Generation:
    """One answer, timed per step.

    Greedy with a KV cache and a `decoder` given: the static-cache decoder (decode.py; a CUDA
    graph per step on the GPU); reuse_prefix keeps the part of its cache that `context_ids`
    starts with. Everything else (sampling, logits output, token-by-token prefill, no cache)
    goes through transformers' `generate`:
    cache: a transformers Cache holding a prefix of context_ids (kept across turns by the
    caller); generate then only runs the uncached tail. use_cache=False: no cache at all, every
    step re-runs the whole sequence (the original's full replay).
    """
    end = end_tokens(tok)
    t0 = time.perf_counter()
    if decoder is not None and use_cache and not token_by_token and temp <= 0 and not output_logits:
        new, stamps = decoder.greedy(context_ids, max_new_tokens, [] if ignore_eos else end.stops,
                                     reuse_prefix)
        logits, done = None, time.perf_counter()
    else:
        if use_cache and token_by_token and len(context_ids) > 1:
            cache = prefill_token_by_token(model, context_ids[:-1], cache)
        new, logits, stamps, done = _transformers_generate(
            model, context_ids, max_new_tokens, end, use_cache=use_cache, cache=cache, temp=temp,
            top_p=top_p, seed=seed, ignore_eos=ignore_eos, output_logits=output_logits)
    if not ignore_eos:
        new = end.cut(new)
    stamps = stamps or [done]
    return Generation(new, logits, done - t0, stamps[0] - t0,
                      [b - a for a, b in zip(stamps, stamps[1:])])


def _transformers_generate(model, context_ids, max_new_tokens, end: EndTokens, *, use_cache,
                           cache, temp, top_p, seed, ignore_eos, output_logits):
    """transformers' generate, one chat -> (new ids uncut, logits or None, token stamps, end)."""
    clock = _StepClock()
    ids = torch.tensor([context_ids], device=next(model.parameters()).device)
    kw = dict(max_new_tokens=max_new_tokens, use_cache=use_cache, streamer=clock,
              return_dict_in_generate=True, output_logits=output_logits,
              **end.generate_kwargs(ignore_eos))
    if use_cache and cache is not None:
        kw[cache_arg(model)] = cache   # generate takes the cache by the forward's name for it
    if temp > 0:
        torch.manual_seed(seed)
        kw.update(do_sample=True, temperature=temp, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    done = time.perf_counter()
    new = out.sequences[0, ids.shape[1]:].tolist()
    logits = torch.cat(out.logits).float() if output_logits else None
    return new, logits, clock.stamps, done


def print_timing(gen: Generation, prompt_tokens: int) -> None:
    print(f"[time] promptTokens={prompt_tokens}")
    print(f"[time] generate: {gen.total_s * 1e3:.1f} ms")
    print(f"[time] prefill: {gen.prefill_s * 1e3:.1f} ms")
    if gen.decode_s:
        per = sum(gen.decode_s) / len(gen.decode_s)
        print(f"[time] decode: {per * 1e3:.1f} ms/token, {1 / per if per > 0 else 0:.1f} tok/s")
    else:
        print("[time] decode: - (one token or none)")


def print_answer(tag: str | None, text: str, gen: Generation) -> None:
    """`out: ...` for an untagged turn (plus its token count), `[tag]out: ...` for the others."""
    if tag is None:
        print(f"out: {text}")
        print(f"out tokens count: {len(gen.ids)}")
    else:
        print(f"[{tag}]out: {text}")
    if os.environ.get("QWEN3_FS_DEBUG_TOKENS") == "1":   # the original's debug switch
        print(f"[debug] generated token ids: {gen.ids}")
