"""Device check of the guard: allocate CUDA memory in 512 MiB steps every 0.2 s until killed.

Run it under the guard (exit 124 and a `[guard] KILL: gpu memory ...` line are the pass):

    python3 scripts/guard.py --gpu-limit-gb 4 --gpu-over-secs 0 --gpu-poll-secs 0.1 \
        script scripts/gpu_guard_demo.py
    echo "exit=$?"    # 124

With `--device cpu` it allocates host memory instead (for `--mode host`, no GPU needed).
Without a guard it runs until the device is full, then exits 1 ("guard never killed me").
"""
import argparse
import time

import torch

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--step-mib", type=int, default=512)
p.add_argument("--interval", type=float, default=0.2, help="seconds between steps")
p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
args = p.parse_args()

if args.device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("gpu_guard_demo: no CUDA device (use --device cpu for a host-memory demo)")

blocks = []
t0 = time.monotonic()
try:
    while True:
        # fill_ touches every page: on unified memory (GB10) an untouched allocation may not
        # count anywhere, and the guard should see what a real training step would use
        block = torch.empty(args.step_mib << 20, dtype=torch.uint8, device=args.device)
        blocks.append(block.fill_(1))
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(f"[demo] t={time.monotonic() - t0:6.2f}s allocated={len(blocks) * args.step_mib} MiB",
              flush=True)
        time.sleep(args.interval)
except torch.OutOfMemoryError as e:
    print(f"[demo] out of memory after {len(blocks) * args.step_mib} MiB: "
          f"guard never killed me ({e})", flush=True)
    raise SystemExit(1)
