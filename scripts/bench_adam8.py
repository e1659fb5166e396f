"""One optimizer step over the 4B's largest tensor (lm_head / embedding: 151,936 x 2,560 values,
bf16), --adam-state-bits 8 (nvfp4lab.adam8) against the peer, torch's fused AdamW with bf16
states, in the same process: time a step, the states' bytes, and the ratios.

    python scripts/bench_adam8.py [--values N] [--device cuda]

Why a bench of its own: the train step's rows in bench.py need the whole 4B shape; this one says
in seconds whether the 8-bit kernel runs at memory speed (10 bytes a value against fused bf16
AdamW's 14) before those rows are run.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab.adam8 import AdamW8bit  # noqa: E402


def one(make, grad: torch.Tensor, steps: int) -> tuple[float, int]:
    """(seconds a step, bytes of the optimizer's states) of the optimizer make() builds."""
    p = torch.zeros_like(grad, requires_grad=True)
    p.grad = grad
    opt = make(p)
    for _ in range(3):
        opt.step()
    if grad.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.step()
    if grad.is_cuda:
        torch.cuda.synchronize()
    held = sum(t.numel() * t.element_size() for t in opt.state[p].values() if torch.is_tensor(t))
    return (time.perf_counter() - t0) / steps, held


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--values", type=int, default=151936 * 2560)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    grad = torch.randn(args.values, device=args.device, dtype=torch.bfloat16)
    fused = args.device.startswith("cuda") or None
    peer_s, peer_b = one(lambda p: torch.optim.AdamW([p], lr=1e-4, fused=fused), grad, args.steps)
    ours_s, ours_b = one(lambda p: AdamW8bit([p], lr=1e-4), grad, args.steps)
    peer = f"torch AdamW{' fused' if fused else ''} (bf16 states)"
    print(f"| optimizer step, {args.values:,} bf16 values ({args.device}) | ours (8-bit states) | "
          f"{peer} | ours vs peer |\n|---|---|---|---|\n"
          f"| time a step | {ours_s * 1e3:.2f} ms | {peer_s * 1e3:.2f} ms | "
          f"{peer_s / ours_s:.2f}x |\n"
          f"| states held | {ours_b / 2**30:.3f} GiB | {peer_b / 2**30:.3f} GiB | "
          f"{peer_b / ours_b:.2f}x less |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
