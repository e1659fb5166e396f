"""Random one-step moves of stored NVFP4 codes: the noise floor of the base-relative measures.

Why: every seed of every recipe adds a few loops and loses a few fragile facts. Is that the
edit's direction, or would ANY change of that many codes do it? Moving the same share of codes by
one grid step, at random positions and in random directions, and judging the result against the
base exactly as train.py judges an edit (the trained form against `deltas_off`), says what a
random edit of that size costs: a floor a trained edit of that size cannot be expected to beat.
Share 0 measures the judge itself: the trained form with all deltas zero against the base form
(different kernels on CUDA), which must add nothing.

The moves are written as deltas (model.make_trainable), so the trained form computes them with
the same fake-quantized forward as a real edit; a one-step move never outgrows the block's scale
(6 only moves down), so the stored scales stay.
"""
import torch

from . import ops
from .model import NVFP4Linear
from .nvfp4_ref import pack_codes, unpack_codes

# The 15 distinct E2M1 values in order and the code of each (-0, code 8, counts as 0).
_ORDER = torch.tensor([15, 14, 13, 12, 11, 10, 9, 0, 1, 2, 3, 4, 5, 6, 7], dtype=torch.uint8)
_RANK = torch.empty(16, dtype=torch.long)
_RANK[_ORDER.long()] = torch.arange(15)
_RANK[8] = 7


def step_codes(codes: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """uint8 codes moved one grid step up (up True) or down; at ±6 the move goes inward."""
    rank = _RANK.to(codes.device)[codes.long()] + torch.where(up, 1, -1)
    rank = torch.where(rank < 0, 1, torch.where(rank > 14, 13, rank))
    return _ORDER.to(codes.device)[rank]


def perturbed_codes(qdata: torch.Tensor, share: float, gen: torch.Generator) -> torch.Tensor:
    """A copy of packed qdata [N, K/2] with round(share * N * K) codes, drawn without
    replacement, each moved one step in a random direction."""
    codes = unpack_codes(qdata.cpu())
    flat = codes.flatten().clone()
    k = round(share * flat.numel())
    idx = torch.randperm(flat.numel(), generator=gen)[:k]
    up = torch.rand(k, generator=gen) < 0.5
    flat[idx] = step_codes(flat[idx], up)
    return pack_codes(flat.view_as(codes)).to(qdata.device)


@torch.no_grad()
def perturb_deltas(model, share: float, seed: int, only: str = "layers.") -> dict[str, int]:
    """Set the deltas of the NVFP4 linears whose name contains `only` so that their stored
    codes move as perturbed_codes says; every other delta to zero. The model must be trainable
    (model.make_trainable). Returns {module name: codes moved}."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    moved = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, NVFP4Linear) or mod.delta is None:
            continue
        mod.delta.zero_()
        if only not in name or share <= 0:
            continue
        new = perturbed_codes(mod.qdata, share, gen)
        diff = ops.dequantize(new, mod.scale) - ops.dequantize(mod.qdata, mod.scale)
        mod.delta.copy_(diff.to(mod.delta.dtype))
        moved[name] = round(share * mod.qdata.numel() * 2)   # step_codes always changes a code
    return moved


__all__ = ["step_codes", "perturbed_codes", "perturb_deltas"]
