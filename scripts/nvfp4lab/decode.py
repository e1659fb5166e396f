"""Batch-1 greedy decoding on a static KV cache; on CUDA each decode step is one CUDA graph replay.

Why not `transformers.generate` for the runners: eager decode of the 4B shape is launch-bound
(36 layers x ~20 kernels: ~45 ms per token, ~21 tok/s on an H100 for us and for plain
transformers alike), and generate's own static-cache mode compiles the forward with
torch.compile, which costs tens of seconds in every new process. Here the forward is still the
model's own (transformers' Qwen3 / Llama with the NVFP4 linears) fed through transformers'
`StaticCache` with an explicit 4D mask, so every tensor of a decode step has a fixed address and
the step can be captured once (~1 s) and replayed per token. On the CPU the same step runs
eagerly; tests compare its tokens with `transformers.generate`.
"""
import inspect
import time

import torch
from transformers import StaticCache

from .attention import decode_attention


def cache_arg(module) -> str:
    """The name `module.forward` takes its KV cache by: `cache` from transformers 5.24 on (where
    `past_key_values` warns that it goes in 5.40), `past_key_values` in the releases before."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def pass_cache_position(model) -> bool:
    """Older transformers take the write position as `cache_position`; newer ones keep a counter
    inside each static layer. The decoders feed both so either works."""
    return "cache_position" in inspect.signature(model.get_decoder().forward).parameters


def set_cache_length(cache, n: int) -> None:
    """Point a StaticCache's per-layer write counters (newer transformers) at n."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False) and hasattr(layer, "cumulative_length"):
            layer.cumulative_length.fill_(n)


# Prompt lengths a prefill is padded to so that it can be captured once per length and replayed
# (StaticDecoder._prefill). A longer prompt, or one whose bucket passes the cache's end, runs
# eagerly at its own length. Up to 2048: an eager 4B prefill is host-bound at any of these
# lengths (~2,200 kernel launches whatever the length), so a replay wins even where half of a
# bucket is padding (512 tokens on an H200: 23.4 ms replayed, 84 ms eager). A captured bucket
# keeps its intermediates in the graph pool the lengths share, so the pool is as large as the
# largest bucket used so far needs.
PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def prefill_bucket(q: int, start: int, capacity: int) -> int | None:
    """The padded length of a q-token prefill written from cache column `start`, or None."""
    b = next((b for b in PREFILL_BUCKETS if b >= q), None)
    return b if b is not None and start + b <= capacity else None


def capture_graph(step, restore, cache, pool=None):
    """`step` captured as a CUDA graph: (graph, None), or (None, why not); then the caller steps
    eagerly (slower, same tokens). step runs once first, a warm-up on a side stream (cuBLAS
    handles, allocator) as torch.cuda.graph requires; restore() then puts the caller's state
    back (the warm-up wrote one position's keys, which the first replay writes again), and again
    after a failed capture."""
    if any(getattr(layer, "is_sliding", False) for layer in cache.layers):
        return None, "sliding-window cache layers"
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    restore()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            step()
    except RuntimeError as e:
        torch.cuda.synchronize()
        restore()
        return None, f"CUDA graph capture failed: {e}"
    return graph, None


class TokenPipe:
    """The tokens of each decode step, read on the host `lookahead` steps behind the GPU.

    Why: reading step i's token with `int()` waits for the whole stream, so the GPU idles while
    the host reads it and launches step i + 1 (a 4B step's graph of ~500 kernels takes a while
    to launch). Here each step's token is copied into pinned host memory behind the step
    (non-blocking) and an event marks the copy; the caller keeps `lookahead - 1` further steps
    queued before it waits for that event, so the GPU always has the next step. A step launched
    past a stop token is wasted (at most lookahead - 1), never wrong: its cache columns are
    masked or overwritten by the next prefill. On the CPU there is nothing to overlap: lookahead
    1, every read immediate. Stamps: perf_counter at the start plus the GPU's own event times,
    so a token's stamp is when the GPU finished it, not when the host looked.
    """

    def __init__(self, src: torch.Tensor, steps: int, start: float, lookahead: int | None = None):
        self.src, self.start = src, start
        self.cuda = src.is_cuda
        self.lookahead = lookahead or (2 if self.cuda else 1)
        self.buf = torch.empty((steps, *src.shape), dtype=src.dtype, pin_memory=self.cuda)
        self.marks: list = []          # per pushed step: a CUDA event, or perf_counter on the CPU
        if self.cuda:
            self.base = torch.cuda.Event(enable_timing=True)
            self.base.record()

    def push(self) -> None:
        """Queue a copy of src (the step just launched wrote it) into the next slot."""
        i = len(self.marks)
        self.buf[i].copy_(self.src, non_blocking=self.cuda)
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def pull(self, i: int) -> tuple[torch.Tensor, float]:
        """(slot i's tokens on the host, when the GPU had them); waits for that step only."""
        mark = self.marks[i]
        if self.cuda:
            mark.synchronize()
            return self.buf[i], self.start + self.base.elapsed_time(mark) / 1e3
        return self.buf[i], mark


def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class StaticCacheDecoder:
    """What the static-cache decoders share: the model's own forward on transformers'
    `StaticCache` with an explicit additive mask, so every tensor of a one-token step (`_step`)
    keeps its address and the step is captured as a CUDA graph at its first use, then replayed.
    Subclasses hold `cache` and give `_step()` and `_restorer()`: a function that puts their
    decoding state back as it is now."""

    def __init__(self, model, use_graph: bool):
        self.model = model
        self.device = model.get_input_embeddings().weight.device
        # Additive masks in the compute dtype (0 = attend, -inf = not): SDPA takes them as they
        # are, where a boolean one is converted again in every layer of every step.
        self.dtype = model.get_input_embeddings().weight.dtype
        self.use_graph = self.device.type == "cuda" and use_graph
        self.cache_kw = cache_arg(model)
        self.pass_cache_position = pass_cache_position(model)
        self.graph = None
        self.graph_note = None   # why the steps ran eagerly although a CUDA graph was asked for
        self.lookahead = None    # steps queued ahead of the host's read (TokenPipe's default)
        # One-query steps through attention.decode_sdpa (cuda/decode_attention.cu) on CUDA. Off:
        # slower than SDPA on an H200 in both versions (v1: 3.34 vs 2.63 ms a compiled + fused
        # 4B step; the split-key v2: 143 vs 149 tok/s in the runners' decoder, 2026-11-30, one
        # run each). bench.py's A/B row measures it.
        self.fast_attention = False

    def _forward(self, ids, positions, slots, mask, model=None, **kw):
        """Logits of the last input position [rows, vocab]: ids [rows, q] at rope positions
        [rows, q], written to cache columns `slots` [q]."""
        kw.update(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True)
        kw[self.cache_kw] = self.cache
        if self.pass_cache_position:
            kw["cache_position"] = slots
        return (self.model if model is None else model)(**kw).logits[:, -1]

    def _run_step(self) -> None:
        if self.use_graph and self.graph is None:
            self.graph, self.graph_note = capture_graph(self._step, self._restorer(), self.cache)
            self.use_graph = self.graph is not None
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()


class PrefillSlot:
    """The fixed-address inputs and output of a prefill padded to `length` tokens, and its CUDA
    graph once captured. ids [1, length] (the prompt, then copies of its last token), pos
    [length] (rope positions = cache columns start..start+length-1), mask [1, 1, length,
    capacity] (causal, so no real row sees a pad row), last [1] (the row of the prompt's last
    token: its logits give the next token), out [1] (that token)."""

    def __init__(self, length: int, capacity: int, dtype, device):
        self.ids = torch.zeros(1, length, dtype=torch.long, device=device)
        self.pos = torch.zeros(length, dtype=torch.long, device=device)
        self.mask = torch.zeros(1, 1, length, capacity, dtype=dtype, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)
        self.out = torch.zeros(1, dtype=torch.long, device=device)
        self.graph = None
        self.uses = 0
        self.note = None          # why the capture failed (then this length stays eager)


class StaticDecoder(StaticCacheDecoder):
    """Greedy decoder holding one static KV cache for one model (batch 1).

    `tokens` are the ids whose keys/values sit in the cache at positions 0..len-1. With
    reuse_prefix=True a new context that starts with them only prefills its new tail (the fp2
    runner's persistent cache across turns); otherwise every call starts from an empty cache.
    """

    def __init__(self, model, capacity: int = 256, use_graph: bool = True,
                 compile_step: bool = False):
        super().__init__(model, use_graph)
        # compile_step: the decode step's forward (one token, fixed shapes) goes through
        # torch.compile before it is captured, so norms, rope, SwiGLU and residuals become a few
        # fused kernels instead of ~60 per layer; the NVFP4 GEMV stays our op (registered with a
        # fake kernel, opaque to Inductor). Costs a compile at the first step (53 s for the 4B
        # shape on an H200); prefill stays eager.
        self.step_model = torch.compile(model, dynamic=False) if compile_step else model
        # Prefill through PREFILL_BUCKETS: on CUDA a prompt is padded to its bucket, and from a
        # bucket's second use on its prefill is one graph replay instead of an eager forward of
        # ~2,200 kernels (the 4B shape: ~75 ms of a 64-token answer's 245 ms on an H200 was the
        # eager prefill, doc/BENCHMARKS.md). pad_prefill: the padded path without graphs (tests).
        self.pad_prefill = False
        self.prefill_pool = None
        self._allocate(capacity)

    # ------------------------------------------------------------------ state

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        # 0 = attend, -inf = not yet written
        self.mask = torch.full((1, 1, 1, capacity), -torch.inf, dtype=self.dtype,
                               device=self.device)
        self.tok = torch.zeros(1, 1, dtype=torch.long, device=self.device)   # input, then output
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)      # position of `tok`
        self.tokens: list[int] = []
        self.graph = None
        self.prefill_slots: dict[int, PrefillSlot] = {}   # graphs hold the old cache's addresses

    def _set_length(self, n: int) -> None:
        """Point the cache's write position (and ours) at n."""
        self.pos.fill_(n)
        set_cache_length(self.cache, n)

    # ------------------------------------------------------------------ prefill / step

    def _causal_mask(self, positions: torch.Tensor) -> torch.Tensor:
        """[1, 1, q, capacity]: 0 where a row at `positions` may attend, -inf where not."""
        keys = torch.arange(self.capacity, device=self.device)
        blocked = (keys[None, :] > positions[:, None])[None, None]
        mask = torch.zeros(blocked.shape, dtype=self.mask.dtype, device=self.device)
        return mask.masked_fill_(blocked, -torch.inf)

    def _prefill(self, ids: list[int], start: int) -> int:
        """Run ids[start:] (positions start..n-1) into the cache; returns the next greedy token."""
        n = len(ids)
        self._set_length(start)
        bucket = (prefill_bucket(n - start, start, self.capacity)
                  if self.use_graph or self.pad_prefill else None)
        if bucket is None:
            positions = torch.arange(start, n, device=self.device)
            logits = self._forward(torch.tensor([ids[start:]], device=self.device),
                                   positions.view(1, -1), positions,
                                   self._causal_mask(positions), logits_to_keep=1)
            token = int(logits.argmax(-1))
        else:
            token = self._padded_prefill(ids, start, bucket)
        self.mask.fill_(-torch.inf)
        self.mask[..., :n] = 0
        self._set_length(n)        # a padded prefill wrote (and counted) its pad columns too
        return token

    def _padded_prefill(self, ids: list[int], start: int, bucket: int) -> int:
        """ids[start:] padded to `bucket` tokens. The pad rows write keys into columns n.. that
        no later row attends before a decode step has written its own there (the decode mask
        opens column p at step p). Graph-captured at the bucket's second use: a prompt seen once
        (one chat question) pays no capture."""
        slot = self.prefill_slots.get(bucket)
        if slot is None:
            slot = self.prefill_slots[bucket] = PrefillSlot(bucket, self.capacity, self.mask.dtype,
                                                            self.device)
        tail = ids[start:]
        slot.ids.copy_(torch.tensor([tail + tail[-1:] * (bucket - len(tail))]))
        torch.arange(start, start + bucket, out=slot.pos)
        slot.mask.copy_(self._causal_mask(slot.pos))
        slot.last.fill_(len(tail) - 1)

        def run():
            logits = self._forward(slot.ids, slot.pos.view(1, -1), slot.pos, slot.mask,
                                   logits_to_keep=slot.last)
            slot.out.copy_(logits.argmax(-1))
        slot.uses += 1
        if self.use_graph and slot.graph is None and slot.note is None and slot.uses >= 2:
            if self.prefill_pool is None:
                self.prefill_pool = torch.cuda.graph_pool_handle()   # one pool for every length
            slot.graph, slot.note = capture_graph(run, lambda: set_cache_length(self.cache, start),
                                                  self.cache, self.prefill_pool)
        if slot.graph is not None:
            slot.graph.replay()
        else:
            run()
        return int(slot.out)

    def _step(self) -> None:
        """Feed `tok` at position `pos`; leaves the greedy next token in `tok`, pos + 1."""
        self.mask.index_fill_(3, self.pos, 0.0)
        logits = self._forward(self.tok, self.pos.view(1, -1), self.pos, self.mask,
                               model=self.step_model)
        self.tok.copy_(logits.argmax(-1).view(1, 1))
        self.pos.add_(1)

    def _restorer(self):
        saved = (self.tok.clone(), int(self.pos))

        def restore():
            self.tok.copy_(saved[0])
            self._set_length(saved[1])
        return restore

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def greedy(self, ids: list[int], max_new_tokens: int, stops: list[int],
               reuse_prefix: bool = False) -> tuple[list[int], list[float]]:
        """Greedy continuation of `ids` (stops at the first stop token, which is included).

        Returns (new token ids, perf_counter stamp after each token).
        """
        if not ids or max_new_tokens <= 0:
            return [], []
        with decode_attention(self.model, self.fast_attention):
            return self._greedy(ids, max_new_tokens, stops, reuse_prefix)

    def _greedy(self, ids, max_new_tokens, stops, reuse_prefix):
        need = len(ids) + max_new_tokens
        if need > self.capacity:
            # Attention reads the whole static cache every step (36 layers x capacity), so it
            # grows in small steps; a new size costs one new capture (~0.1 s).
            self._allocate(round_up(need, 256))
        start = common_prefix(self.tokens, ids) if reuse_prefix else 0
        start = min(start, len(ids) - 1)       # the last prompt token must run: its logits
        out = [self._prefill(ids, start)]
        stamps = [_stamp(self.device)]
        steps = max_new_tokens - 1             # each step feeds one token and yields the next
        pipe = TokenPipe(self.tok.view(1), max(steps, 1), stamps[0], self.lookahead)
        self.tok.fill_(out[0])                 # later steps find their input in tok (_step)
        while len(out) < max_new_tokens and out[-1] not in stops:
            while len(pipe.marks) < min(steps, len(out) - 1 + pipe.lookahead):
                self._run_step()
                pipe.push()
            token, stamp = pipe.pull(len(out) - 1)
            out.append(int(token))
            stamps.append(stamp)
        self.tokens = list(ids) + out[:-1]     # the last token was never fed
        return out, stamps

    def cached_length(self) -> int:
        return len(self.tokens)


def _stamp(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
