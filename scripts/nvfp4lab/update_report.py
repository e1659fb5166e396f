"""What training changed in the NVFP4 file, per group: the share of 4-bit codes and of block
scales that differ from the base (and of dense elements, in their stored dtype).

Why it matters: an update smaller than half a code step is rounded away by the NVFP4 forward, so
a recipe can "train" its blocks for a hundred steps and leave every code as it was. This report
makes that visible after each attempt (a group at 0.0% did not move), and counts the blocks that
outgrew their stored scale (the only way a scale changes: it is frozen while the block fits it).
"""
from dataclasses import dataclass

import torch

from . import ops
from .model import trainable_deltas, updated_tensors


@dataclass
class GroupChange:
    group: str               # head / embed / norms / layer N
    tensors: int = 0         # tensors in the group
    elements: int = 0        # weights (codes for NVFP4 tensors)
    changed: int = 0         # weights whose stored value differs from the base (codes, or dense elements)
    blocks: int = 0          # NVFP4 blocks of 16
    scales_changed: int = 0  # blocks whose scale grew because the update outgrew it

    @property
    def changed_share(self) -> float:
        return self.changed / self.elements if self.elements else 0.0

    @property
    def scales_share(self) -> float:
        return self.scales_changed / self.blocks if self.blocks else 0.0


def group_name(key: str) -> str:
    parts = key.split(".")
    if key.startswith("lm_head"):
        return "head"
    if "embed_tokens" in key:
        return "embed"
    if len(parts) > 2 and parts[1] == "layers":
        return f"layer {int(parts[2])}"
    return "norms"


@torch.no_grad()
def update_report(model, dat) -> list[GroupChange]:
    """Per group, how many stored codes / scales / dense elements the export would change: the
    entries model.updated_tensors would write, compared with the base file's."""
    new = updated_tensors(model, dat)
    groups: dict[str, GroupChange] = {}
    for key, _ in trainable_deltas(model):
        g = groups.setdefault(group_name(key), GroupChange(group_name(key)))
        g.tensors += 1
        prefix = dat.stored_prefix(key)
        if prefix is not None:
            q, s = dat.nvfp4_pair(prefix)
            g.elements += q.numel() * 2
            g.blocks += s.numel()
            if prefix + ".qdata" in new:
                q2, s2 = new[prefix + ".qdata"], new[prefix + ".scale"]
                # Values, not code bytes: +0 and -0 (codes 0 and 8) are the same weight, and so
                # is a code halved in a block whose scale doubled.
                g.changed += int((ops.dequantize(q2, s2) != ops.dequantize(q, s)).sum())
                g.scales_changed += int((s2 != s).sum())
        else:
            base = dat.tensor(key)
            g.elements += base.numel()
            if key in new:
                g.changed += int((new[key] != base).sum())
    order = lambda name: (name != "embed", name.startswith("layer"),   # noqa: E731
                          int(name.split()[1]) if name.startswith("layer") else 0, name == "head")
    return sorted(groups.values(), key=lambda g: order(g.group))


def format_report(rows: list[GroupChange]) -> str:
    """Markdown table, one row per group, then the blocks' total."""
    out = ["| group | tensors | codes/elements changed | scales outgrown |", "|---|---|---|---|"]
    for g in rows:
        scales = f"{g.scales_changed}/{g.blocks} ({g.scales_share:.2%})" if g.blocks else "–"
        out.append(f"| {g.group} | {g.tensors} | {g.changed}/{g.elements} ({g.changed_share:.3%}) | {scales} |")
    layers = [g for g in rows if g.group.startswith("layer")]
    if layers:
        c, e = sum(g.changed for g in layers), sum(g.elements for g in layers)
        sc, b = sum(g.scales_changed for g in layers), sum(g.blocks for g in layers)
        out.append(f"| all layers | {sum(g.tensors for g in layers)} | {c}/{e} ({c / max(e, 1):.3%}) | "
                   f"{sc}/{b} ({sc / max(b, 1):.2%}) |")
    return "\n".join(out)
