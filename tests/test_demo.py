"""End to end on the built-in proxy, exactly as a user types it: `make demo`, `make demo-collapse`.

Minutes, not seconds: marked `demo` (`make test-demo` runs only these, `make test-fast` skips
them); CI runs them as part of `make test`.
"""
import hashlib
import re

import pytest

from conftest import ROOT, run_make
from nvfp4lab.probes import parse_summary

pytestmark = pytest.mark.demo


def data_checksums() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "data").rglob("*")) if p.is_file()}


def summary(stdout: str) -> dict:
    line = [l for l in stdout.splitlines() if l.startswith("verdict=")][-1]
    return parse_summary(line)


def test_make_demo_reaches_the_target_and_keeps_the_rest(tmp_path):
    before = data_checksums()
    r = run_make("demo", tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    s = summary(r.stdout)
    assert s["identity_hit"] >= 0.9 and s["anchor_exact"] >= 0.9
    assert s["anchor_identity"] == 0 and s["repetition_max"] <= 0.5
    # 我是誰 is a near-miss probe: answered, but not with the identity.
    row = [l for l in r.stdout.splitlines() if l.startswith("| nearmiss | 我是誰 |")]
    assert row and row[0].rstrip().endswith("| ok |"), row
    # Both runners ran on the exported file, under the guard.
    assert "run_training2.py" in out and "run_training_fp2.py" in out and "\nout: " in out
    assert out.count("[exit 0, ") == 2         # validate prints "[exit N, X s]" per runner
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "demo-stageG training" in log and "validate demo-stageG.dat" in log
    assert "scripts/guard.py" in log          # the command exactly as run, guard prefix included
    assert "artifacts/demo-stageG.dat" in (tmp_path / "list.md").read_text(encoding="utf-8")
    assert data_checksums() == before         # old data files never change


def test_make_demo_collapse_is_caught_rolled_back_and_retried(tmp_path):
    before = data_checksums()
    r = run_make("demo-collapse", tmp_path)
    out = r.stdout + r.stderr
    assert "[attempt 1]" in out and "collapse" in out, out[-4000:]
    assert "[attempt 1] collapse: weights restored to the initial ones" in out
    assert "[attempt 2] lrs" in out
    # A clear verdict either way: success, or an explicit "not reached" (3) / "collapse" (4) exit
    # code from train.py; make itself exits 2 whenever its recipe fails.
    final = [l for l in out.splitlines() if l.startswith("demo-collapse: ")][-1]
    code = int(re.search(r"; exit (\d+)$", final).group(1))
    assert code in (0, 3, 4), out[-4000:]
    assert ("success" in final) == (code == 0) == (r.returncode == 0)
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "- attempt 1:" in log and "- attempt 2:" in log and "collapse.args" in log
    assert data_checksums() == before
