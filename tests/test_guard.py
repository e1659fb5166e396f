"""The memory guard, on CPU: real processes, real signals, host-memory mode with small limits."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from nvfp4lab import guard

GUARD = Path(__file__).resolve().parents[1] / "scripts" / "guard.py"
STEP = 20 << 20  # the allocating child's step: 20 MiB every 0.1 s
LIMIT_GB = 0.25

# Appends a touched 20 MiB block every 0.1 s and logs "time rss" after each step to argv[1].
# Capped at 60 steps (1.2 GB) so a broken guard cannot take the test machine down.
ALLOC = r"""
import os, sys, time
log = open(sys.argv[1], "w")
blocks = []
for _ in range(60):
    blocks.append(b"\x01" * (20 << 20))  # bytes(n) would be calloc'd, untouched, not resident
    rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    log.write(f"{time.time()} {rss}\n"); log.flush()
    time.sleep(0.1)
sys.exit(99)
"""

# Starts a sleeping grandchild in its own session (so killpg on the child's group misses it),
# writes "child_pid grandchild_pid" to argv[1], then runs argv[2] ("alloc" | "sleep" | "exit").
SPAWN = r"""
import os, signal, subprocess, sys, time
if sys.argv[2] == "sleep":  # deaf to forwarded signals: the guard must escalate to SIGKILL
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
open(sys.argv[1] + ".tmp", "w").write(f"{os.getpid()} {g.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
if sys.argv[2] == "exit":
    sys.exit(0)
if sys.argv[2] == "sleep":
    time.sleep(60)
blocks = []
for _ in range(60):
    blocks.append(b"\x01" * (20 << 20))
    time.sleep(0.1)
"""


def run_guard(*args, timeout=30):
    return subprocess.run([sys.executable, str(GUARD), *args], capture_output=True, text=True,
                          timeout=timeout)


def gone(pid):
    """True when pid no longer runs: /proc entry absent, or a zombie nobody has reaped yet
    (this container's init may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2:].split()[0] == b"Z"


def wait_for_file(path, secs=10):
    deadline = time.monotonic() + secs
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return [int(x) for x in path.read_text().split()]


# ------------------------------------------------------------------------------------- parsing

def test_parse_args_forms():
    a = guard.parse_args(["--gpu-limit-gb", "0.2", "--gpu-over-secs=1.5", "--gpu-poll-secs=0.01",
                          "--measure=total", "--mode", "host", "script", "x.py", "--lr", "3"])
    assert a["limit_gb"] == 0.2 and a["limit_text"] == "0.2"
    assert a["over_secs"] == 1.5 and a["poll_secs"] == guard.MIN_POLL_SECS  # floored
    assert a["measure"] == "total" and a["mode"] == "host"
    assert a["cmd"] == [sys.executable, "x.py", "--lr", "3"]  # the command's flags are its own
    a = guard.parse_args(["--", "make", "--mode", "x"])
    assert a["cmd"] == ["make", "--mode", "x"] and a["limit_gb"] == 108 and a["measure"] == "either"


def test_original_settings_are_the_one_set_of_defaults():
    """108 GiB / 0 s / 0.5 s (the original's command line) come from GuardSettings alone: the
    parser, --help and validate.py's guard prefix all show them."""
    a = guard.parse_args(["--", "true"])
    assert (a["limit_gb"], a["limit_text"], a["over_secs"], a["poll_secs"]) == (108, "108", 0, 0.5)
    assert guard.DEFAULTS.original_flags() == ["--gpu-limit-gb", "108", "--gpu-over-secs", "0",
                                               "--gpu-poll-secs", "0.5"]
    assert "(default 108)" in guard.HELP and "(default 0 = at once)" in guard.HELP
    assert "(default 0.5)" in guard.HELP


@pytest.mark.parametrize("argv", [
    ["--bogus", "1", "--", "true"],
    ["--gpu-limit-gb", "0", "--", "true"],
    ["--gpu-limit-gb", "-3", "--", "true"],
    ["--gpu-limit-gb=abc", "--", "true"],
    ["--gpu-over-secs", "-1", "--", "true"],
    ["--gpu-poll-secs", "0", "--", "true"],
    ["--measure", "max", "--", "true"],
    ["--mode=cuda", "--", "true"],
    ["--gpu-limit-gb"],
    ["--gpu-limit-gb", "4"],
    ["--"],
    ["script"],
    ["true"],
])
def test_usage_errors(argv, capsys):
    assert guard.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("guard.py: error:") and "usage:" in err[0]


def test_usage_error_cli():
    r = run_guard("--nope", "--", "true")
    assert r.returncode == 2 and "unknown flag --nope" in r.stderr and "usage:" in r.stderr


# -------------------------------------------------------------------------------- exit codes

@pytest.mark.parametrize("code,want", [("0", 0), ("3", 3), ("os.kill(os.getpid(), 9)", 128 + 9)])
def test_child_exit_code_passes_through(code, want, tmp_path):
    log = tmp_path / "guard.log"
    for _ in range(2):
        r = run_guard("--mode", "host", f"--log={log}", "--",
                      sys.executable, "-c", f"import os, sys\nsys.exit({code})")
        assert r.returncode == want, r.stderr
        assert "reason=exited" in r.stderr and f"exit={want}" in r.stderr
    lines = log.read_text().splitlines()  # appended, one line per run, newline in cmd escaped
    assert len(lines) == 2 and all(f"reason=exited exit={want}" in l for l in lines)


def test_script_form(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("import sys; print('args', sys.argv[1:]); sys.exit(5)")
    r = run_guard("--mode", "host", "--gpu-limit-gb", "1", "script", str(script), "--x", "1")
    assert r.returncode == 5 and "args ['--x', '1']" in r.stdout
    assert "[guard] start" in r.stderr and "limit=1 GB" in r.stderr


def test_auto_mode_falls_back_to_host_without_nvml():
    if guard.nvml_open()[0] is not None:
        pytest.skip("NVML works here")
    r = run_guard("--", sys.executable, "-c", "pass")
    assert r.returncode == 0 and "host-memory mode" in r.stderr and "mode=host" in r.stderr


# ------------------------------------------------------------------------------------ killing

def test_killed_soon_after_crossing_limit(tmp_path):
    steps = tmp_path / "steps.txt"
    r = run_guard(f"--gpu-limit-gb={LIMIT_GB}", "--gpu-poll-secs=0.05", "--mode=host",
                  "--kill-grace-secs=1", "--", sys.executable, "-c", ALLOC, str(steps))
    assert r.returncode == 124, r.stderr
    assert "KILL: memory" in r.stderr and "reason=killed exit=124" in r.stderr
    rss = [int(line.split()[1]) for line in steps.read_text().splitlines()]
    limit = LIMIT_GB * (1 << 30)
    over = [x for x in rss if x > limit]
    # A poll is 0.05 s and a step 0.1 s: at most one logged step past the limit is typical (none
    # when the kill lands between an allocation and its log line); three would mean the guard
    # missed several polls, which even a loaded 2-core machine should not do.
    assert len(over) <= 3, (len(over), rss)
    assert limit - 2 * STEP < max(rss) < limit + 3 * STEP, rss  # killed for the right reason


def test_grandchild_in_other_session_is_killed(tmp_path):
    pids = tmp_path / "pids"
    r = run_guard("--gpu-limit-gb", str(LIMIT_GB), "--gpu-poll-secs", "0.05", "--mode", "host",
                  "--", sys.executable, "-c", SPAWN, str(pids), "alloc")
    assert r.returncode == 124, r.stderr
    child, grandchild = wait_for_file(pids, 0)
    assert gone(child) and gone(grandchild)


def test_leftover_grandchild_cleaned_when_child_exits(tmp_path):
    pids = tmp_path / "pids"
    r = run_guard("--mode", "host", "--gpu-poll-secs", "0.05", "--kill-grace-secs", "1",
                  "--", sys.executable, "-c", SPAWN, str(pids), "exit")
    assert r.returncode == 0, r.stderr
    child, grandchild = wait_for_file(pids, 0)
    assert gone(grandchild) and "leftover" in r.stderr


@pytest.mark.parametrize("sig,want", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_guard_kills_tree(sig, want, tmp_path):
    pids = tmp_path / "pids"
    p = subprocess.Popen([sys.executable, str(GUARD), "--mode", "host", "--kill-grace-secs", "0.5",
                          "--", sys.executable, "-c", SPAWN, str(pids), "sleep"],
                         stderr=subprocess.PIPE, text=True)
    try:
        child, grandchild = wait_for_file(pids)
        t = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=15)
        took = time.monotonic() - t
    finally:
        p.kill()
    assert p.returncode == want, err
    assert "reason=interrupted" in err and "[guard] SIGKILL to" in err  # both ignore it: escalated
    assert 0.4 < took < 10
    assert gone(child) and gone(grandchild)


def test_guard_exception_still_kills_tree(tmp_path, monkeypatch):
    """In-process run: the guard's own code raises mid-poll; the finally must kill the tree."""
    pids = tmp_path / "pids"

    def boom(_pids):
        if pids.exists():
            raise RuntimeError("guard bug")
        return 0
    monkeypatch.setattr(guard, "tree_rss_bytes", boom)
    with pytest.raises(RuntimeError, match="guard bug"):
        guard.run_guarded([sys.executable, "-c", SPAWN, str(pids), "sleep"], mode="host",
                          poll_secs=0.05, grace_secs=0.2)
    child, grandchild = wait_for_file(pids, 0)
    assert gone(child) and gone(grandchild)


# ------------------------------------------------------------------------------------ helpers

def test_child_tree_pids_and_rss(tmp_path):
    pids = tmp_path / "pids"
    p = subprocess.Popen([sys.executable, "-c", SPAWN, str(pids), "sleep"])
    try:
        child, grandchild = wait_for_file(pids)
        seen = {}
        tree = guard.child_tree_pids(p.pid, seen)
        assert set(tree) == {child, grandchild} and set(seen) == {child, grandchild}
        assert guard.tree_rss_bytes(tree) > 2 * (1 << 20)
        os.kill(child, signal.SIGKILL)  # grandchild is now reparented out of the tree...
        p.wait()
        tree = guard.child_tree_pids(p.pid, seen)
        assert set(tree) == {grandchild}  # ...but remembered
    finally:
        p.kill()
        p.wait()
        if not gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


class FakeNVML:
    """Stand-in for pynvml (no GPU here): one device, `used` bytes on it or NotSupported (None),
    and compute processes as (pid, usedGpuMemory) pairs."""

    class NVMLError(Exception):
        pass

    def __init__(self, used, procs):
        self.used, self.procs = used, procs

    def nvmlDeviceGetMemoryInfo(self, h):
        if self.used is None:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(used=self.used)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=u) for p, u in self.procs]

    def nvmlShutdown(self):
        pass


def test_nvml_usage_reading():
    u = guard.nvml_usage(FakeNVML(5 << 30, [(10, 1 << 30), (11, 2 << 30)]), [0], {10})
    assert u == dict(child=1 << 30, total=5 << 30, device_ok=True, nonzero=True)
    u = guard.nvml_usage(FakeNVML(None, [(10, 1 << 30), (11, 2 << 30)]), [0], {10})
    assert u["total"] == 3 << 30 and not u["device_ok"]  # GB10: sum over processes, as the original
    u = guard.nvml_usage(FakeNVML(None, [(10, None), (11, 0)]), [0], {10})
    assert u == dict(child=0, total=0, device_ok=False, nonzero=False)  # blind: RSS must guard


@pytest.mark.parametrize("used,want", [
    (1 << 30, "total_gpu_mem=1024MiB"),  # discrete GPU: the device total is over the limit
    (None, "gpu+host mode"),  # unified memory, NVML blind: the tree's RSS catches the runaway
])
def test_gpu_mode_loop_with_fake_nvml(used, want, tmp_path, monkeypatch, capsys):
    """The gpu branch of the poll loop, in-process, with a stand-in NVML; the kill is real."""
    monkeypatch.setattr(guard, "nvml_open", lambda: (FakeNVML(used, [(1, None)]), [0]))
    code = guard.run_guarded([sys.executable, "-c", ALLOC, str(tmp_path / "steps")],
                             limit_gb=LIMIT_GB, poll_secs=0.05, grace_secs=0.5)
    err = capsys.readouterr().err
    assert code == 124 and want in err and "KILL: memory" in err, err
