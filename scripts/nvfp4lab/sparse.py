"""Keep the edit to a few stored values: --sparse-share SHARE --sparse-at STEP.

Why: AdamW moves every value whose gradient keeps its sign by about the LR each step, however
small that gradient is, so a full-parameter edit spreads over the whole model (real-en-v4, seed 1:
4.9% of the decoder's NVFP4 codes and 5.8% of the embedding changed), and each of those small
moves blurs something the edit never meant to touch (fragile facts, loops). After STEP steps the
values that moved furthest are the ones the edit leans on; every other delta goes back to 0 and
stays there, and training goes on with the chosen values only (sparse fine-tuning, as in
"lottery-ticket" sparse fine-tuning, Ansell et al. 2022).

"Furthest" is measured in the unit in which a move becomes a changed code: the NVFP4 block's
scale (the grid spacing is 0.5-2 of it). A 2-D dense tensor (the fp16 embedding) is measured in
the scale an NVFP4 block of 16 of its values would have (block amax / 6). 1-D tensors (the norms'
gains: few values, each touching every token) are not masked; their own LR governs them.

The share is global: the layers where the identity is decided keep more of their values than the
others (what a causal-tracing pass would choose by hand).

--sparse-protect P: before training, the diagonal Fisher information of the base's own answers to
the anchor and neighbour rows (the squared gradient of their NLL, summed over small batches) says
which values ordinary answers depend on most; the top P of them are never kept, however far they
moved (the mask-shaped form of EWC, Kirkpatrick et al. 2017).
"""
import torch
from torch.nn.utils import parametrize

from .model import NVFP4Linear
from .nvfp4_ref import BLOCK, SCALE_MIN, e4m3_to_float

SAMPLE = 1 << 24   # values the global threshold is estimated from (4B: 4e9 values in all)


def _dense_unit(base: torch.Tensor) -> torch.Tensor:
    """[out, in] -> [out, in / 16, 1]: the NVFP4 scale a block of 16 values would get."""
    n, k = base.shape
    blocks = base.float().reshape(n, k // BLOCK, BLOCK)
    return (blocks.abs().amax(-1, keepdim=True) / 6.0).clamp_min(SCALE_MIN)


def scaled_deltas(model):
    """(delta parameter, function -> |delta| / unit, same shape as delta) for every masked
    tensor. A function, so that one movement tensor at a time is alive (4B: 10 GB each else)."""
    out = []
    for mod in model.modules():
        if isinstance(mod, NVFP4Linear) and mod.delta is not None:
            out.append((mod.delta, lambda m=mod: _movement(m.delta, e4m3_to_float(m.scale)
                                                           .unsqueeze(-1))))
        if parametrize.is_parametrized(mod):
            for plist in mod.parametrizations.values():
                base, delta = plist[0].base, plist.original
                if base.dim() == 2 and base.shape[1] % BLOCK == 0:
                    out.append((delta, lambda b=base, d=delta: _movement(d, _dense_unit(b))))
    return out


def _movement(delta: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    n, k = delta.shape
    moved = delta.detach().float().reshape(n, k // BLOCK, BLOCK).abs() / unit
    return moved.reshape(n, k)


@torch.no_grad()
def threshold(scaled, share: float, sample: int = SAMPLE, seed: int = 0) -> float:
    """The movement above which `share` of all masked values lie: exact when there are at most
    `sample` values, else estimated from a seeded uniform sample of that size (a strided sample
    is not enough: in a random-init tensor even and odd columns already moved differently)."""
    total = sum(d.numel() for d, _ in scaled)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    parts = []
    for d, f in scaled:
        moved = f().flatten()
        if total > sample:
            idx = torch.randint(moved.numel(), (-(-moved.numel() * sample // total),),
                                generator=gen)
            moved = moved[idx.to(moved.device)]
        parts.append(moved.cpu())
    picked = torch.cat(parts)
    k = max(1, min(picked.numel(), round(picked.numel() * (1.0 - share))))
    return float(picked.kthvalue(k).values)


@torch.no_grad()
def choose_frozen(model, share: float, sample: int = SAMPLE, seed: int = 0,
                  fisher: dict | None = None, protect: float = 0.0) -> dict:
    """{delta parameter: bool tensor, True where the value goes back to the base and stays}.

    Kept: the values whose movement is above the global threshold, then values tied at it, each
    with the same (seeded) chance, until about `share` of all are kept. Ties are the rule, not the
    exception: AdamW moves every value with a steady gradient sign by the same sum of LRs, the
    deltas are bf16, and whole tensors share a handful of e4m3 block scales. A value that never
    moved is never kept, nor (with fisher and protect > 0) one among the top `protect` share by
    Fisher information: it counts as not moved."""
    scaled = scaled_deltas(model)
    if fisher is not None and protect > 0:
        info = lambda d: fisher[d].float() if d in fisher else torch.zeros_like(d, dtype=torch.float32)  # noqa: E731
        fcut = threshold([(d, lambda d=d: info(d)) for d, _ in scaled], protect, sample, seed)
        scaled = [(d, lambda d=d, f=f: f().masked_fill_(info(d) > fcut, 0)) for d, f in scaled]
    cut = threshold(scaled, share, sample, seed)
    total = sum(d.numel() for d, _ in scaled)
    above = tied = 0
    for _, f in scaled:
        moved = f()
        above += int((moved > cut).sum())
        tied += int(((moved == cut) & (moved > 0)).sum())
    fill = min(1.0, max(0.0, (round(share * total) - above) / max(1, tied)))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    frozen = {}
    for d, f in scaled:
        moved = f()
        # One draw per value, tied or not: wasteful (the 4B model: 4e9 draws, seconds once per
        # run), but it is the draw the study's runs made, so their numbers reproduce.
        lucky = torch.rand(moved.shape, generator=gen).to(moved.device) < fill
        frozen[d] = ~((moved > cut) | ((moved == cut) & (moved > 0) & lucky))
    return frozen


def fisher_of(params: list, losses) -> dict:
    """{parameter: bf16 tensor}: the sum over `losses` (scalar losses, e.g. one per small batch
    of anchor rows with the base's answers) of each parameter's squared gradient, i.e. the
    diagonal empirical Fisher. No optimizer may be attached to params (its hooks would step)."""
    fisher = {d: torch.zeros_like(d, dtype=torch.bfloat16) for d in params}
    for loss in losses:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for d, g in zip(params, grads):
            if g is not None:
                fisher[d] += g.float().square().to(torch.bfloat16)
    return fisher


@torch.no_grad()
def apply_(params, frozen: dict) -> None:
    """delta <- 0 where frozen, for every parameter that has a mask."""
    for p in params:
        mask = frozen.get(p)
        if mask is not None:
            p.masked_fill_(mask, 0)


def kept_share(frozen: dict) -> tuple[int, int]:
    """(values kept trainable, values masked in all)."""
    total = sum(m.numel() for m in frozen.values())
    return total - sum(int(m.sum()) for m in frozen.values()), total
