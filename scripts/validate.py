"""Validate a trained `.dat` with both runners, under the memory guard, and log it.

    python scripts/validate.py --weight artifacts/stageG.dat [--model-dir DIR] [--device cuda]

Runs exactly the user's two seed commands (run_training2: 你是誰 multi-turn with KV cache;
run_training_fp2: the training-path answer) at the same time (--serial: one after the other),
prints their output, and appends the commands and outputs to doc/DevLog.md. Exit: 0 when both
runners exit 0, else the first failing code.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import devlog, guard, paths  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER2 = ["--prompt", "你是誰", "--max-tokens", "24", "--check-logits", "false", "--timing", "false",
           "--stop-here", "false", "--KVCacheOut", "true"]
RUNNER_FP2 = ["--max-tokens", "6", "--stop-here", "false", "--check-logits", "false",
              "--timing", "false"]


def run_all(cmds: list[list[str]], parallel: bool) -> list[tuple]:
    """(CompletedProcess, seconds) per command. Parallel: most of a runner's wall time is process
    start, imports and loading, which overlap well; each still runs under its own guard."""
    def run(cmd):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           cwd=paths.ROOT)
        return r, time.perf_counter() - t0
    if not parallel:
        return [run(c) for c in cmds]
    with ThreadPoolExecutor(len(cmds)) as pool:
        return list(pool.map(run, cmds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weight", required=True)
    p.add_argument("--model-dir", default=None)
    p.add_argument("--device", default=None)
    # The original's guard settings, spelled out so the DevLog records them with each command.
    guarded = [sys.executable, f"{HERE}/guard.py", *guard.DEFAULTS.original_flags(), "script"]
    p.add_argument("--guard", default=" ".join(guarded),
                   help="command prefix that runs a script under the guard ('' = no guard)")
    p.add_argument("--serial", action="store_true",
                   help="run the runners one after the other (default: both at once; they need "
                        "~6 and ~17 GB of GPU memory on the 4B model)")
    args = p.parse_args()
    if not os.path.exists(args.weight):
        print(f"error: {args.weight}: no such file (train a stage first, e.g. make demo)",
              file=sys.stderr)
        return 1
    model_dir = args.model_dir or paths.default_model_dir()
    extra = ["--weight", args.weight, "--model-dir", model_dir]
    if args.device:
        extra += ["--device", args.device]
    prefix = shlex.split(args.guard) if args.guard else [sys.executable]
    cmds = [prefix + [os.path.join("scripts", script)] + extra + flags
            for script, flags in (("run_training2.py", RUNNER2), ("run_training_fp2.py", RUNNER_FP2))]
    results = run_all(cmds, parallel=not args.serial)
    sections, first_bad = [], 0
    for cmd, (r, took) in zip(cmds, results):
        script = os.path.basename(cmd[len(prefix)])
        shown = shlex.join(["python" if c == sys.executable else c for c in cmd])
        out = r.stdout + (("\n" + r.stderr) if r.stderr.strip() else "")
        print(f"$ {shown}\n" + out.rstrip() + f"\n[exit {r.returncode}, {took:.1f} s]", flush=True)
        sections.append((f"{script} (exit {r.returncode}, {took:.1f} s)",
                         devlog.code(shown) + "\n\n"
                         + devlog.code(devlog.scrub_output(out.strip()) or "(no output)")))
        first_bad = first_bad or r.returncode
    verdict = "both runners ran" if not first_bad else f"a runner failed (exit {first_bad})"
    devlog.append_devlog(f"validate {os.path.basename(args.weight)}", [
        ("目標/Goal", f"External validation of {args.weight} with both runners"),
        *sections,
        ("結論/Conclusion", verdict),
    ])
    return first_bad


if __name__ == "__main__":
    sys.exit(main())
