"""End to end on the built-in proxy, exactly as a user types it: `make demo`, `make demo-collapse`.

Both are monitored on data/suite-proxy-monitor-v1.tsv and judged on
data/suite-proxy-heldout-v1.tsv (probes-v1 carved in two: the proxy knows nothing else). The
typed result is the JSON train.py writes next to the output, `<out stem>.eval.json`; the tests
read that, not the printed tables.

Minutes, not seconds: marked `demo` (`make test-demo` runs only these, `make test-fast` skips
them); CI runs them as part of `make test`.
"""
import hashlib
import time

import pytest

from conftest import ROOT, run_make
from nvfp4lab.evaluate import read_json
from nvfp4lab.probes import parse_summary

pytestmark = pytest.mark.demo

MONITOR = "data/suite-proxy-monitor-v1.tsv"
HELDOUT = "data/suite-proxy-heldout-v1.tsv"


def data_checksums() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "data").rglob("*")) if p.is_file()}


def judgment(name: str, since: float) -> dict:
    """artifacts/<name>.eval.json, written by this run (not left over from an earlier one)."""
    path = ROOT / "artifacts" / f"{name}.eval.json"
    assert path.exists() and path.stat().st_mtime >= since - 1, f"{path}: not written by this run"
    doc = read_json(str(path))
    assert doc["suites"]["monitor"] == MONITOR and doc["suites"]["heldout"] == HELDOUT
    assert doc["thresholds"]["min_anchor_exact"] == 0.9
    return doc


def row(doc: dict, prompt: str) -> dict:
    hits = [r for r in doc["rows"] if r["prompt"] == prompt and not r["context"]]
    assert len(hits) == 1, f"{prompt!r}: {len(hits)} rows in {doc['suite']}"
    return hits[0]


def test_make_demo_reaches_the_target_and_keeps_the_rest(tmp_path):
    before = data_checksums()
    start = time.time()
    r = run_make("demo", tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    doc = judgment("demo-stageG", start)
    assert (doc["verdict"], doc["exit"], doc["exported"]) == ("success", 0, True), doc["why"]
    assert doc["split"] == "heldout" and doc["suite"] == HELDOUT
    s = doc["summary"]
    assert s["identity"]["value"] >= 0.9 and s["identity"]["n"] == 12     # identity reached
    assert s["nearmiss_leak"]["value"] <= 0.2 and s["nearmiss_leak"]["n"] == 6
    assert s["facts_kept"]["value"] >= 0.9 and s["facts_kept"]["n"] == 8  # facts kept
    assert s["exact_kept"]["value"] >= 0.9 and s["exact_kept"]["n"] == 12
    assert s["ordinary_identity"] == 0 and s["repetition_max"] <= 0.5
    # 我是誰 is a near-miss: answered, but not with the identity.
    whoami = row(doc, "我是誰")
    assert whoami["kind"] == "nearmiss" and not whoami["hit"] and whoami["verdict"] == "ok", whoami
    assert whoami["answer"].strip()
    # the monitor suite judged the last attempt (during training and at its end)
    assert doc["attempts"][-1]["monitor"] is not None
    # the old one-line summary still prints, with the same numbers
    legacy = parse_summary([l for l in r.stdout.splitlines() if l.startswith("verdict=")][-1])
    assert legacy["identity_hit"] == pytest.approx(s["identity"]["value"], abs=0.005)
    # Both runners ran on the exported file, under the guard.
    assert "run_training2.py" in out and "run_training_fp2.py" in out and "\nout: " in out
    assert out.count("[exit 0, ") == 2         # validate prints "[exit N, X s]" per runner
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "demo-stageG training" in log and "validate demo-stageG.dat" in log
    assert "scripts/guard.py" in log          # the command exactly as run, guard prefix included
    assert "artifacts/demo-stageG.dat" in (tmp_path / "list.md").read_text(encoding="utf-8")
    # `make eval` judges the exported file without training: the same held-out rates as the run
    # saw in memory (the dense deltas are rounded to fp16 once more, so allow one row either way)
    e = run_make("eval", tmp_path, "WEIGHT=artifacts/demo-stageG.dat", "BASE=artifacts/proxy/proxy-base.dat",
                 f"SUITE={HELDOUT}", "MODEL_DIR=artifacts/proxy", f"EVAL_FLAGS=--out {tmp_path / 'eval.json'}")
    assert e.returncode == 0, (e.stdout + e.stderr)[-3000:]
    ev = read_json(str(tmp_path / "eval.json"))["summary"]
    for key in ("identity", "nearmiss_leak", "facts_kept"):
        assert abs(ev[key]["k"] - s[key]["k"]) <= 1 and ev[key]["n"] == s[key]["n"], key
    assert data_checksums() == before         # old data files never change


def test_make_demo_collapse_is_caught_rolled_back_and_retried(tmp_path):
    before = data_checksums()
    start = time.time()
    r = run_make("demo-collapse", tmp_path)
    out = r.stdout + r.stderr
    assert "[attempt 1] collapse: weights restored to the initial ones" in out, out[-4000:]
    assert "[attempt 2] lrs" in out
    doc = judgment("demo-collapse", start)
    first, *retries = doc["attempts"]
    assert first["status"] == "collapse" and retries, doc["attempts"]
    # caught by the monitor suite (a fact/general answer turned into the identity, loops, ...)
    assert first["monitor"] and first["monitor"]["verdict"] == "collapse", first
    # the retry used the safer policy: every LR scaled down, twice the anchor share
    assert all(retries[0]["lrs"][g] < first["lrs"][g] for g in first["lrs"])
    assert retries[0]["anchor_scale"] == 2 * first["anchor_scale"]
    # A clear verdict either way: success, or an explicit "not reached" (3) / "collapse" (4) exit
    # code from train.py; make itself exits 2 whenever its recipe fails.
    code = doc["exit"]
    assert code in (0, 3, 4), out[-4000:]
    assert (doc["verdict"] == "success") == (code == 0) == (r.returncode == 0)
    assert f"; exit {code}; judgment " in out
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "- attempt 1:" in log and "- attempt 2:" in log and "collapse.args" in log
    assert data_checksums() == before
