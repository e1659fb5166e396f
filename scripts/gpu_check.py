"""GPU check of the NVFP4 extension: CUDA kernels == CPU kernels bit for bit, linear accuracy, speed.

Run on a CUDA machine:  python3 scripts/gpu_check.py     (builds the extension first if needed)
1. correctness (exit 1 on any failure): quantize / dequantize / fake_quantize / fake_quantize_delta on
   random and edge data, Qwen3-4B shapes included, CUDA vs CPU bytes (CPU vs nvfp4_ref on small shapes);
   output memory is poisoned (0xFF = NaN) before each CUDA call, so unwritten elements show up;
   linear on CUDA for M in 1 2 4 8 16 vs the fp32 product with the dequantized weight (rel. err <= 1e-2);
   the ops inside a CUDA graph.
2. speed (CUDA graphs of calls rotating over enough weight buffers to defeat L2, CUDA events, median of
   25 replays): device copy, dequantize, fake_quantize_delta, linear M=1 (+ a launch-shape sweep), and
   cuBLAS bf16 GEMV on the dense weight for comparison. GB/s counts bytes read + written.
Writes $OUT/gpu_check.json when OUT is set; the results table is printed last.
"""
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

SHAPES_4B = {"gate/up": (9728, 2560), "down": (2560, 9728), "q": (4096, 2560), "lm_head": (151936, 2560)}
FAILS: list[str] = []
LOG: list[dict] = []
ROWS: list[dict] = []  # speed results, kept when a later measurement crashes


def ensure_built():
    """Build when the extension is missing or has no CUDA kernels (e.g. built on a CPU-only torch)."""
    probe = ("import torch, nvfp4lab.ops; "
             "assert torch._C._dispatch_has_kernel_for_dispatch_key('nvfp4::quantize', 'CUDA')")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"))
    if subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode != 0:
        print("building the extension (cuda/build.py) ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "cuda" / "build.py")], check=True)


def check(name: str, ok: bool, detail: str = "") -> None:
    LOG.append({"check": name, "ok": bool(ok), "detail": detail})
    if not ok:
        FAILS.append(f"{name}: {detail}")
    print(f"  [{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)


def poison(nbytes: int) -> None:
    """Fill a block of the caching allocator with 0xFF and free it: the next allocation of that size
    (the op's output) gets it back, so any element the kernel forgets to write reads as NaN/0xFF."""
    torch.full((max(nbytes, 1),), 255, dtype=torch.uint8, device="cuda")


def same_bits(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, str]:
    a, b = a.cpu().contiguous(), b.cpu().contiguous()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, f"shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
    ia = a.view(torch.uint8) if a.element_size() == 1 else a.view({2: torch.int16, 4: torch.int32}[a.element_size()])
    ib = b.view(ia.dtype)
    bad = int((ia != ib).sum())
    return bad == 0, f"{bad} of {a.numel()} differ" if bad else ""


def edge_weight() -> torch.Tensor:
    """Blocks at every e4m3 scale and tie, amax a few ulps around 6 * tie, thresholds hit exactly."""
    e4m3 = torch.arange(0, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    mids = (e4m3[1:] + e4m3[:-1]) / 2
    thr = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    rows = []
    for sc in torch.cat([e4m3[1:], mids]):
        for amax in (6 * sc, torch.nextafter(6 * sc, torch.tensor(0.0)), torch.nextafter(6 * sc, torch.tensor(1e9))):
            b = torch.zeros(16)
            b[0] = amax
            b[1:8] = thr * sc
            b[8:15] = -torch.nextafter(thr * sc, torch.zeros(7))
            b[15] = -0.01 * sc
            rows.append(b)
    rows += [torch.zeros(16), torch.full((16,), 1e4), torch.linspace(-1e-3, 1e-3, 16), torch.linspace(-1e-6, 1e-6, 16)]
    return torch.stack(rows)


def correctness(ops) -> None:
    from nvfp4lab.nvfp4_ref import quantize_ref
    torch.manual_seed(1234)
    cases = [("small", (1, 16)), ("small", (7, 48)), ("small", (64, 272)), ("small", (256, 1024))]
    cases += list(SHAPES_4B.items())
    for label, (n, k) in cases:
        big = n * k > 50_000_000
        print(f"[{label} {n}x{k}]", flush=True)
        rowscale = torch.logspace(-3, 1, n).unsqueeze(1)
        w32 = torch.randn(n, k) * rowscale
        for wdt in ([torch.bfloat16] if big else [torch.float32, torch.bfloat16, torch.float16]):
            w = w32.to(wdt)
            wc = w.cuda()
            q, s = ops.quantize(w)
            poison(q.numel())
            qc, sc = torch.ops.nvfp4.quantize(wc)
            check(f"quantize {wdt} {n}x{k} qdata", *same_bits(qc, q))
            check(f"quantize {wdt} {n}x{k} scale", *same_bits(sc, s))
            if n * k <= 300_000:
                qr, sr = quantize_ref(w)
                check(f"cpu quantize == ref {wdt} {n}x{k}", same_bits(q, qr)[0] and same_bits(s, sr)[0])
            for odt in ([torch.bfloat16] if big else [torch.float32, torch.bfloat16, torch.float16]):
                poison(n * k * odt.itemsize)
                check(f"dequantize -> {odt} {n}x{k}", *same_bits(torch.ops.nvfp4.dequantize(qc, sc, odt),
                                                                   ops.dequantize(q, s, odt)))
            if not big:
                poison(wc.numel() * wc.element_size())
                check(f"fake_quantize {wdt} {n}x{k}", *same_bits(torch.ops.nvfp4.fake_quantize(wc), ops.fake_quantize(w)))
            del wc
        for ddt in ([torch.bfloat16] if big else [torch.float32, torch.bfloat16]):
            delta = (torch.randn(n, k) * rowscale * 0.05).to(ddt)
            for odt in ([torch.bfloat16] if big else [torch.float32, torch.bfloat16]):
                poison(n * k * odt.itemsize)
                got = torch.ops.nvfp4.fake_quantize_delta(qc, sc, delta.cuda(), odt)
                check(f"fake_quantize_delta delta {ddt} -> {odt} {n}x{k}", *same_bits(got, ops.fake_quantize_delta(q, s, delta, odt)))
            q2c, s2c = torch.ops.nvfp4.requantize_delta(qc, sc, delta.cuda())
            q2, s2 = ops.requantize_delta(q, s, delta)
            check(f"requantize_delta delta {ddt} {n}x{k}", same_bits(q2c, q2)[0] and same_bits(s2c, s2)[0])
        del qc, sc
        torch.cuda.empty_cache()

    print("[edge blocks]", flush=True)
    w = edge_weight()
    q, s = ops.quantize(w)
    qr, sr = quantize_ref(w)
    check("cpu quantize == ref, edge", same_bits(q, qr)[0] and same_bits(s, sr)[0])
    qc, sc = torch.ops.nvfp4.quantize(w.cuda())
    check("quantize edge qdata", *same_bits(qc, q))
    check("quantize edge scale", *same_bits(sc, s))
    for dt in (torch.float32, torch.bfloat16):
        check(f"fake_quantize edge {dt}", *same_bits(torch.ops.nvfp4.fake_quantize(w.to(dt).cuda()), ops.fake_quantize(w.to(dt))))
    d = torch.randn(w.shape) * w.abs() * 0.3
    check("fake_quantize_delta edge", *same_bits(torch.ops.nvfp4.fake_quantize_delta(qc, sc, d.cuda(), torch.float32),
                                                 ops.fake_quantize_delta(q, s, d, torch.float32)))
    d[::3] = 0.0                                       # zero deltas keep their stored codes, -0 too
    q2c, s2c = torch.ops.nvfp4.requantize_delta(qc, sc, d.cuda())
    q2, s2 = ops.requantize_delta(q, s, d)
    check("requantize_delta edge", same_bits(q2c, q2)[0] and same_bits(s2c, s2)[0])
    z = torch.zeros(w.shape)
    q0, s0 = torch.ops.nvfp4.requantize_delta(qc, sc, z.cuda())
    check("requantize_delta zero delta = stored bytes", same_bits(q0, qc)[0] and same_bits(s0, sc)[0])
    allb = torch.arange(256, dtype=torch.uint8).reshape(256, 1)
    qa = torch.full((256, 8), 0x72, dtype=torch.uint8)
    nan = torch.isnan(ops.dequantize(qa, allb))
    got = torch.ops.nvfp4.dequantize(qa.cuda(), allb.cuda(), torch.float32).cpu()
    check("dequantize all 256 scale bytes", torch.equal(torch.isnan(got), nan) and same_bits(got[~nan], ops.dequantize(qa, allb)[~nan])[0])
    # info only: torch's own CUDA division by a scalar is a reciprocal multiply, so nvfp4_ref run on
    # CUDA tensors can differ from the CPU reference (= the spec = these kernels) next to scale ties
    qg, sg = quantize_ref(w.cuda())
    LOG.append({"info": "nvfp4_ref on CUDA tensors vs CPU reference, edge blocks: differing scale bytes",
                "value": int((sg.cpu() != sr).sum())})
    print(f"  [info] nvfp4_ref on CUDA vs CPU, edge blocks: {int((sg.cpu() != sr).sum())} scale bytes differ")

    print("[misaligned / strided inputs]", flush=True)
    buf = torch.randn(64 * 256 + 1).to(torch.bfloat16)
    wv = buf[1:].view(64, 256)                                    # data pointer 2 bytes off 16
    check("quantize misaligned view", same_bits(torch.ops.nvfp4.quantize(buf.cuda()[1:].view(64, 256))[0], ops.quantize(wv)[0])[0])
    wt = torch.randn(256, 64).t()
    check("fake_quantize transposed view", *same_bits(torch.ops.nvfp4.fake_quantize(wt.cuda()), ops.fake_quantize(wt)))

    print("[linear]", flush=True)
    lin_cases = [(n, k) for n, k in SHAPES_4B.values()] + [(7, 256), (100, 272), (33, 64)]
    for n, k in lin_cases:
        q, s = ops.quantize(torch.randn(n, k) * 0.05)
        qc, sc = q.cuda(), s.cuda()
        wref = ops.dequantize(qc, sc, torch.float32)
        for m in (1, 2, 3, 4, 8, 16):
            for xdt in ([torch.bfloat16] if n * k > 30_000_000 else [torch.bfloat16, torch.float16, torch.float32]):
                x = torch.randn(m, k, device="cuda").to(xdt)
                poison(m * n * xdt.itemsize)
                y = torch.ops.nvfp4.linear(x, qc, sc)
                ref = x.float() @ wref.T
                err = ((y.float() - ref).norm() / ref.norm()).item()
                ok = y.dtype == xdt and y.shape == (m, n) and not bool(torch.isnan(y).any()) and err <= 1e-2
                check(f"linear {xdt} M={m} {n}x{k}", ok, f"rel err {err:.2e}")
        del wref
    q, s = ops.quantize(torch.randn(7, 512))
    qc, sc = q.cuda(), s.cuda()
    x = torch.randn(5, 512, device="cuda", dtype=torch.bfloat16)
    ref = x.float() @ ops.dequantize(qc, sc).T
    for rows in (1, 2, 4):
        for threads in (16, 32, 96, 256):
            y = torch.ops.nvfp4._linear_cfg(x, qc, sc, rows, threads)
            err = ((y.float() - ref).norm() / ref.norm()).item()
            check(f"linear cfg rows={rows} threads={threads}", err <= 1e-2 and not bool(torch.isnan(y).any()), f"rel err {err:.2e}")

    print("[CUDA graph]", flush=True)
    q, s = ops.quantize(torch.randn(256, 512))
    qc, sc = q.cuda(), s.cuda()
    d = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16) * 0.01
    x = torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)
    eager = (torch.ops.nvfp4.fake_quantize_delta(qc, sc, d, torch.bfloat16), torch.ops.nvfp4.linear(x, qc, sc))
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = (torch.ops.nvfp4.fake_quantize_delta(qc, sc, d, torch.bfloat16), ops.linear(x, qc, sc))
        g.replay()
        torch.cuda.synchronize()
        check("ops captured in a CUDA graph", same_bits(out[0], eager[0])[0] and same_bits(out[1], eager[1])[0])
    except Exception as e:  # noqa: BLE001
        check("ops captured in a CUDA graph", False, repr(e))


def bench(fns, reps: int = 25) -> float:
    """Median seconds per call. All fns go into one CUDA graph (no launch gaps from Python); each
    replay is timed with events. Falls back to timing eager calls if capture fails."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            keep = [f() for f in fns]  # noqa: F841  (outputs stay alive: distinct buffers)
        run = g.replay
    except Exception:  # noqa: BLE001
        def run():
            for f in fns:
                f()
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / len(fns))
    return statistics.median(times)


def speed(ops) -> None:
    rows = ROWS
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)

    def add(op, shape, m, t, nbytes, extra=""):
        rows.append({"op": op, "shape": shape, "M": m, "us": t * 1e6, "GB/s": nbytes / t / 1e9, "note": extra})

    n_copy = 1 << 28  # 1 GiB of fp32
    src = torch.randn(n_copy, device="cuda")
    dst = torch.empty_like(src)
    t = bench([lambda: dst.copy_(src)] * 3, reps=20)
    add("copy", "1 GiB", "", t, 2 * 4 * n_copy)
    del src, dst
    torch.cuda.empty_cache()

    for name, (n, k) in SHAPES_4B.items():
        shape = f"{name} {n}x{k}"
        packed = n * k // 2 + n * k // 16
        nbuf = max(4, math.ceil(3 * l2 / packed))
        ws = [ops.quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, check=False) for _ in range(nbuf)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)

        t = bench([lambda q=q, s=s: torch.ops.nvfp4.dequantize(q, s, torch.bfloat16) for q, s in ws])
        add("dequantize->bf16", shape, "", t, packed + 2 * n * k)

        nd = max(2, math.ceil(3 * l2 / (2 * n * k)))
        deltas = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 1e-3 for _ in range(min(nd, 4 if n > 100_000 else nd))]
        fns = [lambda q=ws[i % nbuf][0], s=ws[i % nbuf][1], d=d: torch.ops.nvfp4.fake_quantize_delta(q, s, d, torch.bfloat16)
               for i, d in enumerate(deltas)]
        t = bench(fns)
        add("fake_quantize_delta bf16", shape, "", t, packed + 4 * n * k)
        del deltas, fns

        for m in (1, 8, 16):
            xm = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t = bench([lambda q=q, s=s: torch.ops.nvfp4.linear(xm, q, s) for q, s in ws])
            add("linear", shape, m, t, packed + 2 * m * (n + k))
        # launch-shape sweep: rows per group x threads (16 = half-warp kernel, the default; 96.. = CTA kernel)
        for m, configs in ((1, [(r, th) for r in (1, 2, 4) for th in (16, 96, 128, 256)]),
                           (8, [(r, th) for r in (1, 2, 4) for th in (16, 128)])):
            xm = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            best = None
            for r, th in configs:
                t = bench([lambda q=q, s=s: torch.ops.nvfp4._linear_cfg(xm, q, s, r, th) for q, s in ws], reps=15)
                LOG.append({"sweep": shape, "M": m, "rows": r, "threads": th, "us": t * 1e6})
                if best is None or t < best[0]:
                    best = (t, r, th)
            add("linear best cfg", shape, m, best[0], packed + 2 * m * (n + k), f"rows={best[1]} threads={best[2]}")
        del ws
        torch.cuda.empty_cache()

        # reference point: cuBLAS bf16 GEMV on the dense weight (4x the bytes of the packed one)
        nb = max(2, math.ceil(3 * l2 / (2 * n * k)))
        dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(min(nb, 3 if n > 100_000 else nb))]
        t = bench([lambda w=w: x @ w.t() for w in dense])
        add("cuBLAS dense bf16 (ref)", shape, 1, t, 2 * n * k + 2 * (n + k))
        del dense
        torch.cuda.empty_cache()

    w = torch.randn(9728, 2560, device="cuda", dtype=torch.bfloat16)
    t = bench([lambda: torch.ops.nvfp4.quantize(w)] * 4)
    add("quantize bf16", "gate/up 9728x2560", "", t, 9728 * 2560 * (2 + 0.5 + 1 / 16))


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    ensure_built()
    from nvfp4lab import ops
    dev = torch.cuda.get_device_name(0)
    print(f"device {dev}, torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    t0 = time.time()
    try:
        correctness(ops)
    except Exception as e:  # noqa: BLE001  (a crash is a failure; still measure and report)
        import traceback
        traceback.print_exc()
        check("correctness run", False, repr(e))
    print(f"correctness: {len(FAILS)} failures ({time.time() - t0:.0f} s)", flush=True)
    try:
        speed(ops)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        check("speed run", False, repr(e))
    rows = ROWS
    copy_bw = rows[0]["GB/s"] if rows else float("nan")
    for r in rows:
        r["%copy"] = 100 * r["GB/s"] / copy_bw
    table = [f"{'op':<26}{'shape':<24}{'M':>3}{'us':>10}{'GB/s':>9}{'%copy':>7}  note"]
    for r in rows:
        table.append(f"{r['op']:<26}{r['shape']:<24}{r['M']!s:>3}{r['us']:>10.1f}{r['GB/s']:>9.0f}{r['%copy']:>6.0f}%  {r['note']}")
    text = "\n".join(table)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "gpu_check.json").write_text(json.dumps(
            {"device": dev, "torch": torch.__version__, "failures": FAILS, "results": rows, "log": LOG}, indent=1))
    sweep = [e for e in LOG if "sweep" in e]
    if sweep:
        print("linear launch-shape sweep (us): " + "; ".join(
            f"{e['sweep'].split()[0]} M{e['M']} r{e['rows']} t{e['threads']} {e['us']:.1f}" for e in sweep))
    print(f"\nNVFP4 gpu_check on {dev}: {'ALL CHECKS PASSED' if not FAILS else f'{len(FAILS)} CHECKS FAILED'}")
    for f in FAILS[:20]:
        print("  FAIL " + f)
    print(text)
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
