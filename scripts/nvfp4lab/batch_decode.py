"""Greedy decoding of many chats at once on one static KV cache; on CUDA each step is one CUDA
graph replay. The decoder of suites, probes, replay and --self-kl-rows (generate.greedy_chats).

Why not `transformers.generate`: its eager decode step is launch-bound (SmolLM2: 30 layers x
~25 kernels, several ms of Python and launches a token whatever the batch), and inside training
that is most of a probe round and all of a --self-kl-rows round. Here, as in decode.StaticDecoder
(the runners' batch-1 decoder), the model's own forward runs on transformers' `StaticCache` with
an explicit additive mask, so every tensor of a step has a fixed address and the step is
captured once per batch and replayed per token.

Left padding: row b of a batch of length T starts with pad_b pads. Its tokens sit in cache
columns pad_b..T-1 and its rope positions count from 0 at column pad_b, as generate's
`position_ids = cumsum(attention_mask) - 1`. A pad query may attend only to itself (a fully
masked row would be NaN, and its NaN values would reach real rows through 0 x NaN).
"""
import torch
from transformers import StaticCache

from .attention import decode_attention
from .decode import StaticCacheDecoder, TokenPipe, set_cache_length


class BatchDecoder(StaticCacheDecoder):
    """Greedy continuation of up to `rows` token lists of up to `capacity` - new tokens."""

    def __init__(self, model, rows: int, capacity: int, use_graph: bool = True):
        super().__init__(model, use_graph)
        self.rows, self.capacity = rows, capacity
        self.cache = StaticCache(config=model.config, max_cache_len=capacity)
        self.mask = torch.full((rows, 1, 1, capacity), -torch.inf, dtype=self.dtype,
                               device=self.device)
        self.tok = torch.zeros(rows, 1, dtype=torch.long, device=self.device)  # input, then output
        self.pos = torch.zeros(rows, dtype=torch.long, device=self.device)     # rope position of tok
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)       # its cache column

    def _prefill(self, seqs: list[list[int]], pad: int) -> None:
        t = max(len(s) for s in seqs)
        lead = torch.tensor([t - len(s) for s in seqs] + [t] * (self.rows - len(seqs)),
                            device=self.device)                        # [rows] pads in front
        ids = torch.full((self.rows, t), pad, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, t - len(s):] = torch.tensor(s)
        cols = torch.arange(t, device=self.device)
        positions = (cols[None, :] - lead[:, None]).clamp_min(0)     # [rows, t]
        keys = torch.arange(self.capacity, device=self.device)
        seen = (keys[None, None, :] <= cols[None, :, None]) & (keys[None, None, :] >= lead[:, None, None])
        seen |= keys[None, None, :] == cols[None, :, None]             # a pad query sees itself
        mask = torch.zeros((self.rows, 1, t, self.capacity), dtype=self.dtype, device=self.device)
        mask.masked_fill_(~seen[:, None], -torch.inf)
        set_cache_length(self.cache, 0)
        logits = self._forward(ids.to(self.device), positions, cols, mask, logits_to_keep=1)
        self.tok.copy_(logits.argmax(-1).view(self.rows, 1))
        live = (keys[None, :] >= lead[:, None]) & (keys[None, :] < t)  # [rows, capacity]
        self.mask.fill_(-torch.inf)
        self.mask.masked_fill_(live.view(self.rows, 1, 1, self.capacity), 0.0)
        self.pos.copy_(t - lead)
        self.slot.fill_(t)

    def _step(self) -> None:
        """Feed `tok` at column `slot` (positions `pos`); leaves the next greedy tokens in `tok`."""
        self.mask.index_fill_(3, self.slot, 0.0)
        logits = self._forward(self.tok, self.pos.view(self.rows, 1), self.slot, self.mask)
        self.tok.copy_(logits.argmax(-1).view(self.rows, 1))
        self.pos.add_(1)
        self.slot.add_(1)

    def _restorer(self):
        saved = (self.tok.clone(), self.pos.clone(), self.slot.clone(), self.mask.clone())

        def restore():
            for t, s in zip((self.tok, self.pos, self.slot, self.mask), saved):
                t.copy_(s)
            set_cache_length(self.cache, int(saved[2]))
        return restore

    @torch.no_grad()
    def greedy(self, seqs: list[list[int]], max_new_tokens: int, stops: list[int],
               pad: int) -> list[list[int]]:
        """Each seq's greedy continuation, up to max_new_tokens, cut after its first stop token."""
        if not seqs or max_new_tokens <= 0:
            return [[] for _ in seqs]
        if len(seqs) > self.rows or max(map(len, seqs)) + max_new_tokens > self.capacity:
            raise ValueError(f"BatchDecoder({self.rows} rows, capacity {self.capacity}) cannot "
                             f"hold {len(seqs)} seqs of up to {max(map(len, seqs))} tokens + "
                             f"{max_new_tokens} new ones")
        with decode_attention(self.model, self.fast_attention):
            return self._greedy(seqs, max_new_tokens, stops, pad)

    def _greedy(self, seqs, max_new_tokens, stops, pad):
        self._prefill(seqs, pad)
        # slot 0: the prefill's tokens; slot k: after k steps. Rows are read lookahead - 1 steps
        # behind the GPU (decode.TokenPipe), so the batch may run one step past its last stop.
        pipe = TokenPipe(self.tok.view(self.rows), max_new_tokens, 0.0, self.lookahead)
        pipe.push()
        out = [[] for _ in seqs]
        done = [False] * len(seqs)
        stop = set(stops)
        for k in range(max_new_tokens):
            while len(pipe.marks) < min(max_new_tokens, k + pipe.lookahead):
                self._run_step()
                pipe.push()
            for b, t in enumerate(pipe.pull(k)[0][:len(seqs)].tolist()):
                if not done[b]:
                    out[b].append(t)
                    done[b] = t in stop or len(out[b]) >= max_new_tokens
            if all(done):
                break
        return out
