"""Which part of a trained edit does what: judge the edit with one group of its tensors put back
to the base's (the embedding, the final norm, the head, a band of layers with their own norms),
group after group.

Why (doc/METHOD.md "Rounds 32-33"): three seeds of one recipe move mostly the same codes, and
the dev facts they lose are in that shared part, the identity is not. Where in the network each
of them lives says where a constraint, a smaller LR or a frozen group would cost the facts least
for the identity kept. A group is put back by copying the base's stored tensors into the loaded
edit (NVFP4 codes and scales, dense values) and copied back after its judgment, so one load of
each file serves every group.
"""
import math
from contextlib import contextmanager

import torch

from .dat import DatFile, nvfp4_prefix
from .merge import changed_codes, nvfp4_elements
from .model import NVFP4Linear
from .update_report import group_name


def tensors_by_group(model) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """update_report's groups (head / embed / norms / layer N) -> (name, tensor) of every stored
    tensor in it: an NVFP4 linear's qdata and scale, a dense parameter itself."""
    out: dict[str, list] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, NVFP4Linear):
            g = group_name(f"{name}.weight")
            out.setdefault(g, []).extend([(f"{name}.qdata", mod.qdata), (f"{name}.scale", mod.scale)])
    for name, p in model.named_parameters():
        out.setdefault(group_name(name), []).append((name, p))
    return out


def layer_bands(num_layers: int, width: int) -> list[tuple[str, list[str]]]:
    """(label, groups) per band of `width` consecutive layers: ("layers 0-4", ["layer 0", ...])."""
    return [(f"layers {i}-{min(i + width, num_layers) - 1}" if width > 1 else f"layer {i}",
             [f"layer {j}" for j in range(i, min(i + width, num_layers))])
            for i in range(0, num_layers, width)]


def default_parts(num_layers: int, width: int) -> list[tuple[str, list[str]]]:
    """What the script puts back one at a time: the embedding, the final norm ("norms": a
    layer's own norms go with its layer, as in update_report), the head, each band."""
    return [("embed", ["embed"]), ("norms", ["norms"]), ("head", ["head"])] + \
        layer_bands(num_layers, width)


def changed_by_group(base: DatFile, edit: DatFile) -> dict[str, tuple[int, int]]:
    """group -> (weights the edit changed, all weights), from the two files once: NVFP4 weights
    by their value (merge.changed_codes, as update_report counts), dense ones by their stored
    value."""
    out: dict[str, tuple[int, int]] = {}

    def add(key, changed, total):
        c, t = out.get(group_name(key), (0, 0))
        out[group_name(key)] = (c + changed, t + total)

    codes = nvfp4_elements(base)
    for prefix, changed in changed_codes(base, edit).items():
        add(prefix, changed, codes[prefix])
    for e in base.entries:
        if nvfp4_prefix(e.key) is None and e.dtype.is_floating_point:
            add(e.key, int((edit.tensor(e.key) != base.tensor(e.key)).sum()), math.prod(e.shape))
    return out


@contextmanager
def reverted(edit_model, base_model, groups: list[str]):
    """Inside: edit_model with these groups' stored tensors equal to base_model's; the edit's own
    values again on exit (also on an exception). Both models must come from files of one layout
    (merge.check_same_layout)."""
    mine, theirs = tensors_by_group(edit_model), tensors_by_group(base_model)
    unknown = [g for g in groups if g not in mine]
    if unknown:
        raise KeyError(f"no tensors in group {unknown[0]!r} (groups: {', '.join(sorted(mine))})")
    saved = []
    with torch.no_grad():
        for g in groups:
            base = dict(theirs[g])
            for name, t in mine[g]:
                saved.append((t, t.detach().clone()))
                t.copy_(base[name])
    try:
        yield edit_model
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)
