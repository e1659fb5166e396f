"""Compare recipe variants on a DEV probe set, several at once, and pick one by a fixed rule.

    python scripts/sweep.py --recipe data/stages/real-en.args --variants data/stages/real-en.sweep \
        --dev-probes data/probes-real-en-dev-v1.tsv --input-dat BASE.dat --model-dir DIR --jobs 8

Each variant is `train.py --recipe R <variant flags> --probes DEV`, written under --work-dir. The
recipe's own (held-out) probes are never read here: tuning on them would turn a held-out score
into a tuned one. Choice rule, fixed before any run: success on the dev probes first, then
identity_hit - nearmiss_leak, then facts_kept, then the lower NLL drift. The chosen variant's
flags are written to --chosen (one line) for `make demo-real`, and the table goes to the DevLog.

Exit codes: 0 a variant reached the target on the dev probes, 3 none did (best one still written),
1 bad input, 2 usage.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import devlog  # noqa: E402
from nvfp4lab.probes import parse_summary  # noqa: E402

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")


def read_variants(path: str) -> list[tuple[str, str]]:
    """NAME<TAB>FLAGS per line (FLAGS may be empty = the recipe as it is); # comments."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "\t" not in line:
                raise ValueError(f"{path}:{n}: no tab between variant name and flags")
            name, flags = line.split("\t", 1)
            if not re.fullmatch(r"[\w.-]+", name):
                raise ValueError(f"{path}:{n}: variant name {name!r} must be letters, digits, . _ -")
            out.append((name, flags.strip()))
    if not out:
        raise ValueError(f"{path}: no variants")
    return out


def run_variant(name, flags, args, env) -> dict:
    out_dat = os.path.join(args.work_dir, f"sweep-{name}.dat")
    cmd = [sys.executable, TRAIN, "--recipe", args.recipe, *shlex.split(flags),
           "--probes", args.dev_probes, "--input-dat", args.input_dat, "--model-dir", args.model_dir,
           "--output-dat", out_dat, "--stage", f"sweep-{name}", "--device", args.device]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        code, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        code, text = -1, (e.stdout or b"").decode(errors="replace") + f"\ntimeout after {args.timeout}s"
    with open(os.path.join(args.work_dir, f"sweep-{name}.log"), "w", encoding="utf-8") as f:
        f.write(shlex.join(cmd) + "\n" + text)
    lines = [l for l in text.splitlines() if l.startswith("verdict=")]
    nums = parse_summary(lines[-1]) if lines else {}
    last = text.strip().splitlines()[-1] if text.strip() else ""
    status = {0: "success", 3: "not-reached", 4: "collapse", -1: "timeout"}.get(code, f"error {code}")
    return {"name": name, "flags": flags, "status": status, "nums": nums,
            "seconds": time.time() - t0, "last": last}


def rank_key(v: dict):
    n = v["nums"]
    if not n:   # collapsed / failed: after every variant that produced probes
        return (0, 0, -1.0, 0.0, 0.0)
    return (1, v["status"] == "success", n["identity_hit"] - n["nearmiss_leak"], n["facts_kept"],
            -n["nll_drift"])


def table(results: list[dict]) -> str:
    rows = ["| variant | flags | verdict | identity | leak | facts kept | NLL drift | rep. | s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for v in results:
        n = v["nums"]
        f = (lambda k, fmt="{:.2f}": fmt.format(n[k]) if k in n else "-")
        rows.append(f"| {v['name']} | `{v['flags'] or '(recipe)'}` | {v['status']} | {f('identity_hit')} | "
                    f"{f('nearmiss_leak')} | {f('facts_kept')} | {f('nll_drift', '{:.3f}')} | "
                    f"{f('repetition_max')} | {v['seconds']:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--variants", required=True, help="file: NAME<TAB>FLAGS per line")
    p.add_argument("--dev-probes", required=True, help="probe set used to compare (not the held-out one)")
    p.add_argument("--input-dat", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="variants run at once")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    p.add_argument("--work-dir", default="artifacts/sweep")
    p.add_argument("--chosen", default="artifacts/sweep/chosen.flags",
                   help="where the chosen variant's flags are written")
    args = p.parse_args(argv)
    try:
        for path in (args.recipe, args.dev_probes, args.input_dat):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file")
        variants = read_variants(args.variants)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.work_dir, exist_ok=True)
    env = dict(os.environ)
    # several trainers on one machine: split the CPU threads instead of oversubscribing them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, args.jobs))))
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda v: run_variant(*v, args, env), variants))
    for v in results:
        print(f"[{v['name']}] {v['status']} {v['seconds']:.0f}s: {v['last']}", flush=True)
    best = max(results, key=rank_key)
    print(table(results))
    print(f"chosen: {best['name']} {best['flags']}")
    tmp = args.chosen + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.chosen)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(best["flags"] + "\n")
    os.replace(tmp, args.chosen)
    devlog.append_devlog(f"sweep {os.path.basename(args.variants)}", [
        ("目標/Goal", f"compare recipe variants of {args.recipe} on the dev probes {args.dev_probes} "
                      "(the recipe's held-out probes are not read); rule: success, then identity - "
                      "leak, then facts kept, then lower NLL drift."),
        ("指令/Command", devlog.code(devlog.command_line())),
        ("結果/Results", table(results)),
        ("結論/Conclusion", f"chosen: {best['name']} (`{best['flags'] or '(recipe)'}`), "
                            f"{best['status']}; {time.time() - t0:.0f}s for {len(results)} variants, "
                            f"{args.jobs} at once; flags in {args.chosen}"),
    ])
    return 0 if best["status"] == "success" else 3


if __name__ == "__main__":
    sys.exit(main())
