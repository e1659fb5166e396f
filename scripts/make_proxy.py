"""Build the built-in proxy base model: artifacts/proxy/{config.json, tokenizer, proxy-base.dat}.

    python scripts/make_proxy.py [--data data/proxy-knowledge-v1.tsv] [--steps 700] [--seed 0]

Deterministic for a given seed and machine. Prints how many corpus rows the exported NVFP4 model
answers exactly (greedy), and records its probe answers as the reference for later stages.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import devlog, paths  # noqa: E402
from nvfp4lab.atomic import AtomicFile  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.generate import greedy_answers  # noqa: E402
from nvfp4lab.model import load_model  # noqa: E402
from nvfp4lab.proxy import export_proxy, train_proxy  # noqa: E402
from nvfp4lab.tsv import DataError, read_probes  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/proxy-knowledge-v1.tsv")
    p.add_argument("--probes", default="data/probes-v1.tsv")
    p.add_argument("--out-dir", default=str(paths.PROXY_DIR))
    p.add_argument("--steps", type=int, default=700)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    t0 = time.time()
    try:
        model, tok, rows = train_proxy(args.data, args.steps, args.seed)
        probes = read_probes(args.probes)
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # Build into a temp dir, then swap it in: a half-built proxy is never left behind.
    with AtomicFile(args.out_dir, directory=True) as tmp:
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        dat_path = os.path.join(tmp, "proxy-base.dat")
        export_proxy(model, dat_path)
        # Check the exported file through the same loader every stage uses.
        nv = load_model(read_dat(dat_path), tmp, "cpu", torch.float32)
        answers = greedy_answers(nv, tok, [r.prompt for r in rows], 48)
        exact = sum(a == r.target for a, r in zip(answers, rows))
        probe_answers = greedy_answers(nv, tok, [q.prompt for q in probes], 48)
        with open(os.path.join(tmp, "base-probes.tsv"), "w", encoding="utf-8") as f:
            for q, a in zip(probes, probe_answers):
                f.write(f"{q.kind}\t{q.prompt}\t{a}\n")
    secs = time.time() - t0
    out_dir = devlog.repo_relative(str(args.out_dir))
    msg = (f"proxy: {exact}/{len(rows)} corpus rows answered exactly after NVFP4 export; "
           f"{secs:.0f}s; -> {out_dir}/proxy-base.dat")
    print(msg)
    devlog.append_devlog("proxy base model", [
        ("目標/Goal", "Small Qwen3 proxy (real tokenizer) that answers like Qwen3-4B-Instruct"),
        ("指令/Command", devlog.code(devlog.command_line())),
        ("產物/Output", f"- {out_dir}/proxy-base.dat, config.json, tokenizer, base-probes.tsv"),
        ("結論/Conclusion", msg),
    ])
    return 0 if exact >= 0.95 * len(rows) else 3


if __name__ == "__main__":
    sys.exit(main())
