"""AdamW whose two states take one byte a value (--adam-state-bits 8).

Why: the 4B's full-parameter QAT holds AdamW's m and v in bf16, 4 bytes a trained value (16.4 GiB
of a train step's ~28 GiB held between steps). Coded in 8 bits with one fp32 scale per 256 values
they take 2.03 bytes a value: 8.1 GiB less. The codes (logarithmic, relative to each block's
largest value) and the update are in cuda/nvfp4_common.h; torch.ops.nvfp4.adam8_step_ runs them on
the CPU or the GPU, one call per tensor. The update of a step uses that step's exact fp32 m and v;
only what is kept for the next step is coded (as bitsandbytes' 8-bit Adam does).

Same hyper-parameters and decoupled weight decay as torch.optim.AdamW (amsgrad, maximize and
foreach are not offered); param groups may carry extra keys (the trainer's "peak_lr", "name").
"""
import torch

from . import ops  # noqa: F401  (loads the extension: torch.ops.nvfp4.adam8_step_)

BLOCK = 256   # values per scale (ADAM8_BLOCK in cuda/nvfp4_common.h)


def state_bytes(numel: int) -> int:
    """Bytes the two 8-bit states of `numel` values hold (codes + scales)."""
    return 2 * (numel + 4 * (-(-numel // BLOCK)))


class AdamW8bit(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW8bit: lr {lr}, betas {betas}, eps {eps}, weight_decay "
                             f"{weight_decay} out of range")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})

    def _state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            nb = -(-p.numel() // BLOCK)
            st["step"] = 0
            st["m"] = torch.zeros(p.numel(), dtype=torch.uint8, device=p.device)
            st["m_scale"] = torch.zeros(nb, dtype=torch.float32, device=p.device)   # 0: m = 0
            st["s"] = torch.zeros(p.numel(), dtype=torch.uint8, device=p.device)
            st["s_scale"] = torch.zeros(nb, dtype=torch.float32, device=p.device)   # 0: v = 0
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit: sparse gradients are not supported")
                if not p.is_contiguous():
                    raise RuntimeError("AdamW8bit: the trained tensor must be contiguous")
                st = self._state(p)
                st["step"] += 1
                t = st["step"]
                torch.ops.nvfp4.adam8_step_(
                    p.view(-1), p.grad.to(p.dtype).contiguous().view(-1), st["m"], st["m_scale"],
                    st["s"], st["s_scale"], group["lr"], beta1, beta2, group["eps"],
                    group["weight_decay"], 1.0 - beta1 ** t, 1.0 - beta2 ** t)
        return loss
