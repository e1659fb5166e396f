"""Compare recipe variants on a DEV set, several at once, and pick one by a fixed rule.

    python scripts/sweep.py --recipe data/stages/real-en.args --variants data/stages/real-en.sweep \
        --dev-suite data/suite-en-dev-v1.tsv --monitor data/suite-en-monitor-v1.tsv \
        --input-dat BASE.dat --model-dir DIR --jobs 8

Each variant is `train.py --recipe R <variant flags> --heldout DEV [--monitor M]` (an old probe
file: `--dev-probes P` -> `--probes P`), written under --work-dir; its result is read from the
JSON train.py writes next to the variant's `.dat` (`sweep-NAME.eval.json`), never from its
stdout. The held-out suite is never read here: tuning on it would turn a held-out score into a
tuned one. Choice rule, fixed before any run: success on the dev set first, then identity hit -
near-miss leak, then facts kept, then the lower NLL drift. The chosen variant's flags are
written to --chosen (one line) for `make demo-real`, and the table goes to the DevLog.

`--resume` runs only what is missing: a judgment already in --work-dir is reused when its JSON's
`command` has the very arguments this run would give train.py (the `.dat`'s folder aside), so a
study some of whose runs timed out is finished by running those again, and judgments of runs
done in several calls are tabled together by the same rule.

Exit codes: 0 a variant reached the target on the dev set, 3 none did (best one still written),
1 bad input, 2 usage.
"""
import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import devlog, evaluate, trainer  # noqa: E402
from nvfp4lab.atomic import AtomicFile  # noqa: E402
from nvfp4lab.probes import Thresholds  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
STATUS = {0: "success", 3: "not-reached", 4: "collapse", -1: "timeout"}


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


def job_env(env: dict, index: int, gpus: int) -> dict:
    """The environment of the index-th run: with several GPUs, runs go to them in turn (each
    trainer sees one GPU as cuda:0); with one, the caller's CUDA_VISIBLE_DEVICES is left alone."""
    return {**env, "CUDA_VISIBLE_DEVICES": str(index % gpus)} if gpus > 1 else env


def train_args(args: list[str]) -> list[str]:
    """train.py's arguments as compared by --resume: repository paths relative, and the `.dat`'s
    folder left out (where a run wrote its weights does not change what it learnt)."""
    out = [devlog.repo_relative(t) for t in args]
    for k in range(len(out) - 1):
        if out[k] == "--output-dat":
            out[k + 1] = os.path.basename(out[k + 1])
    return out


def same_run_judgment(json_file: str, cmd: list[str]) -> dict | None:
    """--resume: the judgment, when train.py wrote it run with these very arguments (the JSON's
    `command`), so that it is this run's result; else None (stale, unreadable or missing)."""
    try:
        doc = evaluate.read_json(json_file)
    except DataError:
        return None
    words = shlex.split(doc.get("command") or "")   # python scripts/train.py ARGS
    script = next((k for k, w in enumerate(words) if w.endswith(".py")), None)
    same = script is not None and train_args(words[script + 1:]) == train_args(cmd[2:])
    return doc if same else None


def run_variant(name, flags, args, env) -> dict:
    out_dat = os.path.join(args.work_dir, f"sweep-{name}.dat")
    judged = ["--heldout", args.dev_suite] if args.dev_suite else ["--probes", args.dev_probes]
    cmd = [sys.executable, TRAIN, "--recipe", args.recipe, *shlex.split(flags), *judged,
           *(["--monitor", args.monitor] if args.monitor else []),
           "--input-dat", args.input_dat, "--model-dir", args.model_dir,
           "--output-dat", out_dat, "--stage", f"sweep-{name}", "--device", args.device]
    json_file = evaluate.json_path(out_dat)
    doc = same_run_judgment(json_file, cmd) if args.resume else None
    if doc is not None:
        return {**result_from(name, flags, doc, doc.get("total_seconds") or 0.0,
                              "judgment reused (--resume)"), "reused": True}
    if os.path.exists(json_file):   # a judgment left by an earlier sweep must never be read
        os.remove(json_file)
    t0 = time.time()
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        code, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        code, text = -1, (e.stdout or b"").decode(errors="replace") + f"\ntimeout after {args.timeout}s"
    with open(os.path.join(args.work_dir, f"sweep-{name}.log"), "w", encoding="utf-8") as f:
        f.write(shlex.join(cmd) + "\n" + text)
    return result_of(name, flags, code, json_file, time.time() - t0,
                     text.strip().splitlines()[-1] if text.strip() else "")


def result_of(name: str, flags: str, code: int, json_file: str, seconds: float, last: str) -> dict:
    """A variant's outcome from train.py's exit code and its JSON judgment (summary None when
    it wrote none: bad input, timeout, crash)."""
    doc = None
    if code in (0, 3, 4):
        try:
            doc = evaluate.read_json(json_file)
        except DataError as e:
            code, last = 1, str(e)
    return result_from(name, flags, doc, seconds, last, STATUS.get(code, f"error {code}"))


def result_from(name: str, flags: str, doc: dict | None, seconds: float, last: str,
                failed: str = "") -> dict:
    """A variant's outcome from its judgment (doc None: the `failed` status, no summary)."""
    status = doc["verdict"] if doc else failed
    return {"name": name, "flags": flags, "status": status,
            "summary": doc.get("summary") if doc else None, "seconds": seconds, "last": last,
            "misses": criteria_missed(doc) if doc and status != "collapse" else FAILED_MISSES,
            "target_tokens": (doc.get("target_tokens") or []) if doc else []}


# a collapsed, failed or timed-out run counts as missing more criteria than a judgment can
# (evaluate.missed checks at most 9 bounds), so --rule misses never prefers it to a judged run
FAILED_MISSES = 10


def criteria_missed(doc: dict) -> int | None:
    """How many acceptance criteria a judgment misses (evaluate.missed, by its own thresholds);
    None for a judgment too old to hold every measure or its thresholds."""
    try:
        return len(evaluate.missed(evaluate.summary_from_json(doc["summary"]),
                                   Thresholds(**doc["thresholds"])))
    except (KeyError, TypeError):
        return None


def value(s: dict, key: str) -> float:
    """A summary number, or a rate's value; n/a (null) counts as 0 so that it never wins."""
    x = s.get(key)
    x = x.get("value") if isinstance(x, dict) else x
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def rank_key(v: dict):
    s = v["summary"]
    tier = {"success": 2, "not-reached": 1}.get(v["status"], 0)
    if not s or tier == 0:   # collapsed / failed: after every variant judged on the dev set
        return (0, 0.0, 0.0, 0.0)
    return (tier, value(s, "identity") - value(s, "nearmiss_leak"), value(s, "facts_kept"),
            -value(s, "nll_drift"))


def dev_score(s: dict) -> float:
    """trainer.edit_score (the formula monitor_score uses) on a JSON summary."""
    leak = max(value(s, "nearmiss_leak"), value(s, "context_leak"), value(s, "greeting_intro"))
    facts = value(s, "facts_kept") if (s.get("facts_kept") or {}).get("n") else 1.0
    return trainer.edit_score(value(s, "identity"), leak, facts, value(s, "nll_drift"))


POOLED = ("identity", "nearmiss_leak", "context_leak", "greeting_intro", "facts_kept", "loops")


def pooled(results: list[dict]) -> list[dict]:
    """--seeds: one row per variant over its seeds. The rule: most seeds that reached the target
    on the dev set, then the mean dev_score, then mean facts kept, then the lower mean NLL drift;
    a collapsed or failed seed scores -1."""
    out = {}
    for v in results:
        out.setdefault(v["variant"], []).append(v)
    rows = []
    for name, runs in out.items():
        judged = [r["summary"] for r in runs if r["summary"] and r["status"] != "collapse"]
        mean = lambda f: sum(map(f, judged)) / len(judged) if judged else 0.0  # noqa: E731
        scores = [dev_score(r["summary"]) if r["summary"] and r["status"] != "collapse" else -1.0
                  for r in runs]
        rate_sum = lambda k: (sum((s.get(k) or {}).get("k", 0) for s in judged),  # noqa: E731
                              sum((s.get(k) or {}).get("n", 0) for s in judged))
        rows.append({"name": name, "flags": runs[0]["base_flags"], "runs": runs,
                     "successes": sum(r["status"] == "success" for r in runs),
                     "score": sum(scores) / len(scores),
                     "misses": (None if any(r.get("misses") is None for r in runs)
                                else sum(r["misses"] for r in runs)),
                     "facts": mean(lambda s: value(s, "facts_kept")),
                     "drift": mean(lambda s: value(s, "nll_drift")),
                     "rates": {k: rate_sum(k) for k in POOLED}})
    return rows


def pooled_key(v: dict, rule: str = "score"):
    """The pooled rule: most seeds reached, then (--rule misses) the fewest acceptance criteria
    missed over the seeds, then the mean dev score, facts kept, lower NLL drift. Why misses:
    dev_score weighs identity, leak, facts and drift, not loops, so when no seed reaches, a
    variant that adds loops can win over one that adds none (round 24)."""
    if rule == "misses" and v["misses"] is None:
        raise ValueError(f"{v['name']}: a judgment without every measure or its thresholds (an "
                         "older JSON): --rule misses cannot count its criteria; run it again")
    head = (v["successes"], -v["misses"]) if rule == "misses" else (v["successes"],)
    return (*head, v["score"], v["facts"], -v["drift"])


def pooled_table(rows: list[dict]) -> str:
    out = ["| variant | flags | seeds reached | criteria missed | mean score | identity | near-miss leak "
           "| context leak | greeting intro | facts kept | loops added | mean NLL drift | verdicts |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in rows:
        cells = [f"{v['rates'][k][0]}/{v['rates'][k][1]} " + evaluate.rate_text(evaluate.rate(*v["rates"][k]))
                 for k in POOLED]
        out.append(f"| {v['name']} | `{v['flags'] or '(recipe)'}` | {v['successes']}/{len(v['runs'])} | "
                   f"{'-' if v['misses'] is None else v['misses']} | {v['score']:+.3f} | " + " | ".join(cells) + f" | {v['drift']:+.3f} | "
                   + ", ".join(r["status"] for r in v["runs"]) + " |")
    return "\n".join(out)


def profile_table(rows: list[dict]) -> str:
    """The identity answer token by token (evaluate.target_profile), pooled over each variant's
    judged seeds: per token, the dev identity rows that put it first. Where a variant wins or
    loses its identity answer ("." after "F#", " of" after " God"), which the rates do not
    show. "" when no judgment has a profile (older JSON files)."""
    pooled_rows, tokens = [], None
    for v in rows:
        runs = [r["target_tokens"] for r in v["runs"]
                if r.get("target_tokens") and r["summary"] and r["status"] != "collapse"]
        if not runs:
            continue
        tokens = tokens or [p["token"] for p in runs[0]]
        cells = [f"{sum(p[k]['first_choice'] for p in runs)}/{sum(p[k]['rows'] for p in runs)}"
                 for k in range(len(tokens))]
        pooled_rows.append(f"| {v['name']} | " + " | ".join(cells) + " |")
    if not pooled_rows:
        return ""
    head = "| variant | " + " | ".join(f"`{t!r}`" for t in tokens) + " |"
    return "\n".join([head, "|---|" + "---|" * len(tokens), *pooled_rows])


def table(results: list[dict]) -> str:
    rows = ["| variant | flags | verdict | identity | near-miss leak | context leak | facts kept | "
            "loops added | NLL drift | KL | s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in results:
        s = v["summary"] or {}
        rate = (lambda k: evaluate.rate_text(s[k]) if k in s else "-")
        num = (lambda k, fmt: fmt.format(s[k]) if s.get(k) is not None else "-")
        rows.append(f"| {v['name']} | `{v['flags'] or '(recipe)'}` | {v['status']} | "
                    f"{rate('identity')} | {rate('nearmiss_leak')} | {rate('context_leak')} | "
                    f"{rate('facts_kept')} | {rate('loops')} | {num('nll_drift', '{:+.3f}')} | {num('kl', '{:.4f}')} | "
                    f"{v['seconds']:.0f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", required=True)
    p.add_argument("--variants", required=True, help="file: NAME<TAB>FLAGS per line")
    dev = p.add_mutually_exclusive_group(required=True)
    dev.add_argument("--dev-suite", help="suite the variants are compared on (never the held-out one)")
    dev.add_argument("--dev-probes", help="old probe file to compare on instead")
    p.add_argument("--monitor", help="suite each variant is monitored on during training")
    p.add_argument("--input-dat", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="variants run at once")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per variant")
    p.add_argument("--gpus", type=int, default=1,
                   help="GPUs of this host: run i goes to GPU i mod N (device time is wall time, "
                        "so two GPUs halve a study's)")
    p.add_argument("--work-dir", default="artifacts/sweep")
    p.add_argument("--chosen", default="artifacts/sweep/chosen.flags",
                   help="where the chosen variant's flags are written")
    p.add_argument("--seeds", default="",
                   help="run every variant once per seed (e.g. \"1 2 3\") and choose on the pooled "
                        "results: seeds reached, then (--rule) mean dev score (sweep.dev_score)")
    p.add_argument("--rule", choices=("score", "misses"), default="score",
                   help="--seeds' pooled rule after seeds reached: score = the mean dev score "
                        "(rounds 1-24); misses = first the fewest acceptance criteria missed over "
                        "the seeds (loops included), then the mean dev score")
    p.add_argument("--resume", action="store_true",
                   help="reuse a run's judgment in --work-dir when train.py wrote it with the very "
                        "arguments this run would use (its JSON's command; the .dat's folder "
                        "aside); run only the others (e.g. after timeouts)")
    args = p.parse_args(argv)
    try:
        for path in (args.recipe, args.dev_suite or args.dev_probes, args.monitor, args.input_dat):
            if path and not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file")
        variants = read_variants(args.variants)
        seeds = [int(x) for x in args.seeds.split()]
        if args.gpus < 1:
            raise ValueError(f"--gpus {args.gpus}: must be at least 1")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.work_dir, exist_ok=True)
    env = dict(os.environ)
    # several trainers on one machine: split the CPU threads instead of oversubscribing them
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, args.jobs))))
    t0 = time.time()
    runs = [(f"{n}-s{seed}", f"{f} --seed {seed}".strip(), n, f) for n, f in variants
            for seed in seeds] if seeds else [(n, f, n, f) for n, f in variants]

    def one(i: int) -> dict:
        name, flags, variant, base_flags = runs[i]
        return {**run_variant(name, flags, args, job_env(env, i, args.gpus)),
                "variant": variant, "base_flags": base_flags}

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, range(len(runs))))
    reused = sum(bool(v.get("reused")) for v in results)
    for v in results:
        print(f"[{v['name']}] {v['status']} {v['seconds']:.0f}s: {v['last']}", flush=True)
    print(table(results))
    if not any(v["summary"] for v in results):
        # e.g. an empty .dat left by a failed join: nothing was judged, so nothing is chosen (a
        # stale choice file would be read by the next stage as this sweep's)
        print(f"error: none of the {len(results)} runs was judged ("
              + ", ".join(sorted({v['status'] for v in results})) + f"); {args.chosen} not written",
              file=sys.stderr)
        return 1
    pooled_text = ""
    if seeds:
        rows = pooled(results)
        try:
            best = max(rows, key=lambda v: pooled_key(v, args.rule))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        best = {**best, "status": "success" if best["successes"] * 2 > len(seeds) else "not-reached"}
        pooled_text = pooled_table(rows)
        profile = profile_table(rows)
        if profile:   # the identity answer token by token, first choice pooled over the seeds
            pooled_text += "\n\nIdentity answer token by token (dev identity rows putting it first):\n\n" + profile
        print(pooled_text)
    else:
        best = max(results, key=rank_key)
    print(f"chosen: {best['name']} {best['flags']}")
    with AtomicFile(args.chosen) as f:
        f.write((best["flags"] + "\n").encode("utf-8"))
    devlog.append_devlog(f"sweep {os.path.basename(args.variants)}", [
        ("目標/Goal", f"compare recipe variants of {args.recipe} on the dev set "
                      f"{args.dev_suite or args.dev_probes} (monitor {args.monitor or '-'}; the "
                      "held-out set is not read); rule: success, then "
                      + ("fewest criteria missed (pooled), then " if args.rule == "misses" else "")
                      + "identity - near-miss leak, then facts kept, then lower NLL drift; numbers "
                      "from each variant's sweep-NAME.eval.json."),
        ("指令/Command", devlog.code(devlog.command_line())),
        ("結果/Results", table(results) + ("\n\n" + pooled_text if seeds else "")),
        ("結論/Conclusion", f"chosen: {best['name']} (`{best['flags'] or '(recipe)'}`), "
                            f"{best['status']}; {time.time() - t0:.0f}s for {len(results)} variants, "
                            f"{args.jobs} at once"
                            + (f" ({reused} judgments reused by --resume)" if reused else "")
                            + f"; flags in {args.chosen}"),
    ])
    return 0 if best["status"] == "success" else 3


if __name__ == "__main__":
    sys.exit(main())
