"""--train-neurons: the edit confined to a block of 16 MLP neurons in each of a few layers,
repurposed as the identity's own (T-Patcher's added neurons, adapted to a fixed architecture).

Why: every full-parameter recipe of rounds 16-37 moved ~1.3% of the decoder's NVFP4 codes and lost
the same fragile facts or added loops, and a random edit of 0.003% already added loops
(doc/METHOD.md "The noise floor"). Here only these values may move, per chosen layer L and block
b (neurons n = 16b .. 16b+15 of the intermediate dimension):

    mlp.gate_proj.weight[n, :]   mlp.up_proj.weight[n, :]   (the neurons' own rows)
    mlp.down_proj.weight[:, n]   (one NVFP4 block of 16 values in every row: NVFP4 blocks run
                                  along the input dimension, and n is aligned to them)

So a grown block scale can only touch these neurons, every other stored byte of the model stays
the base's, and an answer can change only through the block's activation silu(g_n . x) (u_n . x).
The hold term (--neuron-hold-weight) keeps that activation's contribution where the base had it on
every token of the rows that keep the base's behaviour (anchor / neighbour):

    hold = sum_t |c_new(x_t) - c_base(x_t)|^2 / sum_t |mlp_base(x_t)|^2,
    c(x) = down[:, n] (silu(gate[n] x) * up[n] x)       (t: the kept rows' real tokens)

a scale-free share (the base MLP's whole output on the same tokens as the unit), while CE on the
identity rows makes the block answer there.

Which block: the 16 consecutive neurons whose summed output |a_n| |down[:, n]| over the kept
rows' chats (prompt + the base's answer) is smallest, i.e. the ones the base's ordinary answers
lean on least (quietest_blocks): what the repurposing takes away is what they gave.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .model import NVFP4Linear
from .nvfp4_ref import BLOCK   # neurons a block: one NVFP4 block of down_proj's input dimension

# the block's parts: (projection, True = its rows are the neurons' / False = its columns are)
PARTS = (("gate_proj", True), ("up_proj", True), ("down_proj", False))


@dataclass(frozen=True)
class NeuronBlock:
    layer: int
    first: int    # first neuron, a multiple of BLOCK

    @property
    def neurons(self) -> slice:
        return slice(self.first, self.first + BLOCK)


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """--train-neurons 'A-B[,C]' -> sorted layers; a bad part raises ValueError naming it."""
    layers: set[int] = set()
    for part in spec.split(","):
        a, _, b = part.strip().partition("-")
        try:
            first, last = int(a), int(b or a)
        except ValueError:
            raise ValueError(f"--train-neurons {spec!r}: {part!r} is not 'A-B' or 'A'") from None
        if not 0 <= first <= last < num_layers:
            raise ValueError(f"--train-neurons {spec!r}: {part!r}: layers must lie in "
                             f"0-{num_layers - 1}")
        layers.update(range(first, last + 1))
    return sorted(layers)


def mlp_of(model, layer: int):
    mlp = model.model.layers[layer].mlp
    for name in ("gate_proj", "up_proj", "down_proj"):
        if not isinstance(getattr(mlp, name, None), NVFP4Linear):
            raise ValueError(f"layer {layer}'s mlp.{name} is not an NVFP4 linear: --train-neurons "
                             "needs a gated MLP stored in NVFP4")
    return mlp


@torch.no_grad()
def neuron_outputs(model, layers: list[int], batches) -> dict[int, torch.Tensor]:
    """{layer: [intermediate] sum over the batches' real tokens of |a_n| |down[:, n]|}: how much
    each neuron writes into the residual stream on these chats (the base's weights: call it
    before training or with the deltas off). batches: dicts with input_ids and attention_mask."""
    sums = {layer: 0.0 for layer in layers}
    state = {}
    hooks = []
    for layer in layers:
        down = mlp_of(model, layer).down_proj
        col = ops.dequantize(down.qdata, down.scale, torch.float32).norm(dim=0)   # [I], once

        def take(_m, inputs, layer=layer, col=col):
            a = inputs[0][state["mask"]].float().abs()                   # [tokens, I]
            sums[layer] = sums[layer] + a.sum(0) * col.to(a.device)
        hooks.append(down.register_forward_pre_hook(take))
    try:
        for batch in batches:
            state["mask"] = batch["attention_mask"].bool()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {layer: s.cpu() for layer, s in sums.items()}


def quietest_blocks(outputs: dict[int, torch.Tensor], per_layer: int = 1) -> list[NeuronBlock]:
    """The per_layer blocks of each layer with the smallest summed output (neuron_outputs)."""
    out = []
    for layer, s in sorted(outputs.items()):
        if s.numel() % BLOCK:
            raise ValueError(f"layer {layer}: {s.numel()} neurons is not a multiple of {BLOCK}")
        per_block = s.reshape(-1, BLOCK).sum(1)
        for b in sorted(per_block.argsort()[:per_layer].tolist()):
            out.append(NeuronBlock(layer, b * BLOCK))
    return out


def masks_of(model, blocks: list[NeuronBlock]) -> dict:
    """{delta parameter: bool [out, in], True where the value may move} of the chosen blocks."""
    masks = {}
    for blk in blocks:
        mlp = mlp_of(model, blk.layer)
        for name, rows in PARTS:
            d = getattr(mlp, name).delta
            m = masks.setdefault(d, torch.zeros(d.shape, dtype=torch.bool, device=d.device))
            if rows:
                m[blk.neurons, :] = True
            else:
                m[:, blk.neurons] = True
    return masks


def confine(deltas, masks: dict) -> list:
    """Only the masked values train: every other delta gets no gradient (requires_grad off, no
    optimizer state), and the gradient of a masked one is zeroed outside its mask before it
    accumulates, so AdamW never moves those values (zero moments give a zero step, and a zero
    value stays zero under weight decay). Returns the deltas still trained."""
    kept = []
    for key, d in deltas:
        m = masks.get(d)
        if m is None:
            d.requires_grad_(False)
            continue
        d.register_hook(lambda g, m=m: g * m.to(g.dtype))
        kept.append((key, d))
    return kept


def _packed(mod: NVFP4Linear, neurons: slice, rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(qdata, scale) of the block's rows of mod, or of its BLOCK columns (aligned to the NVFP4
    blocks, so they are whole blocks: [out, BLOCK / 2] codes and [out, 1] scales)."""
    if rows:
        return mod.qdata[neurons], mod.scale[neurons]
    return (mod.qdata[:, neurons.start // 2:neurons.stop // 2].contiguous(),
            mod.scale[:, neurons.start // BLOCK:neurons.stop // BLOCK].contiguous())


def _trained(mod: NVFP4Linear, neurons: slice, rows: bool) -> torch.Tensor:
    """The block's trained rows (or columns) of mod, float32: the NVFP4 requantization of base +
    delta with the straight-through gradient (as QATLinearFn: d w / d delta = 1)."""
    q, s = _packed(mod, neurons, rows)
    u = mod.delta[neurons] if rows else mod.delta[:, neurons]
    w = ops.fake_quantize_delta(q, s, u.detach().contiguous(), torch.float32)
    return u.float() + (w - u.detach().float())


class NeuronHold:
    """The hold term of the chosen blocks over one training forward: `start(mask)` with the
    [B, T] tokens it applies to, the forward, then `take()` -> the scalar (0 if no token).
    Forwards without gradient (the base's KL targets, generation, the monitor) are not counted."""

    def __init__(self, model, blocks: list[NeuronBlock]):
        self.mask = None
        self.num = self.den = None
        self.hooks = []
        for blk in blocks:
            mlp = mlp_of(model, blk.layer)
            # the block's base weights, unpacked once: the base never changes during training
            base = tuple(ops.dequantize(*_packed(getattr(mlp, name), blk.neurons, rows),
                                        torch.float32) for name, rows in PARTS)
            self.hooks.append(mlp.register_forward_hook(
                lambda m, inputs, out, blk=blk, base=base: self._add(m, inputs[0], out, blk, base)))

    def _add(self, mlp, x: torch.Tensor, out: torch.Tensor, blk: NeuronBlock, base) -> None:
        if self.mask is None or not torch.is_grad_enabled() or not mlp.down_proj.use_delta:
            return
        xs = x[self.mask].float()                                          # [t, H]
        if xs.shape[0] == 0:
            return
        g, u, d = (_trained(getattr(mlp, name), blk.neurons, rows) for name, rows in PARTS)
        g0, u0, d0 = base
        new = (F.silu(xs @ g.t()) * (xs @ u.t())) @ d.t()                  # [t, H]
        with torch.no_grad():
            old = (F.silu(xs @ g0.t()) * (xs @ u0.t())) @ d0.t()
            # the unit: the base MLP's output there (the output minus the block's change), so the
            # term cannot shrink by the block outgrowing the rest of the MLP
            den = (out[self.mask].float() - new + old).square().sum()
        num = (new - old).square().sum()
        self.num = num if self.num is None else self.num + num
        self.den = den if self.den is None else self.den + den

    def start(self, mask: torch.Tensor) -> None:
        self.mask, self.num, self.den = mask, None, None

    def take(self) -> torch.Tensor | None:
        """The hold term of the forward since start(), or None when no kept token was seen."""
        num, den = self.num, self.den
        self.mask, self.num, self.den = None, None, None
        return None if num is None else num / den.clamp_min(1e-12)

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
