"""One GEMV for sibling projections that read the same input: q/k/v, and gate/up.

Why: a decode step of the 4B shape is ~600 kernels even compiled (doc/BENCHMARKS.md), and at a
few µs each their count, not the 2.3 GB of weights, sets the step time. Attention's q/k/v and
the MLP's gate/up each read one input, so their packed rows can sit in one tensor and be read by
one GEMV: 7 GEMVs a layer become 4, and the small k/v ones (1,024 rows) stop wasting a launch.

How, without touching transformers' attention or MLP code: the siblings' qdata/scale become
row slices (views) of one concatenated tensor (NVFP4 blocks run along a row, so rows can be
stacked as they are; no extra memory). The first sibling called (q_proj, gate_proj: the order in
which transformers' Qwen3/Llama call them) runs the GEMV over all rows and keeps the output with
the input it was for; a sibling called next with that same input tensor returns its column
slice, and with any other input computes its own rows as before. Only the base form at decode
sizes (<= GEMV_MAX_ROWS rows) takes this path, through ops.linear on any device. On CUDA the
GEMV's sums per row depend on K and the launch shape, not on the number of rows (launch_gemv),
so a row's output is the unfused GEMV's bit for bit; on the CPU ops.linear is a float32 matmul
(tests compare the greedy tokens).
"""
import torch

from .model import NVFP4Linear

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class FusedRows:
    """The stacked packed weight of a group of siblings, and the last output of its GEMV."""

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor):
        self.qdata, self.scale = qdata, scale
        self.x = None    # the input the last full GEMV was for
        self.y = None    # its output [..., all rows]


@torch.no_grad()
def fuse_siblings(model) -> int:
    """Stack every sibling group of base-form NVFP4 linears (no delta) into one packed tensor;
    returns the number of groups fused. Idempotent: fused linears are left as they are."""
    groups = 0
    for parent in model.modules():
        for names in SIBLINGS:
            mods = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, NVFP4Linear) and m.delta is None and m.fused is None
                       for m in mods):
                continue
            if len({m.in_features for m in mods}) != 1:
                continue
            rows = FusedRows(torch.cat([m.qdata for m in mods]), torch.cat([m.scale for m in mods]))
            start = 0
            for i, m in enumerate(mods):
                end = start + m.out_features
                m.qdata, m.scale = rows.qdata[start:end], rows.scale[start:end]   # views
                m.fused = (rows, start, end, i == 0)
                start = end
            groups += 1
    return groups
