"""The warm runner server (scripts/runner_server.py, nvfp4lab/warm.py): a runner handed to it
answers exactly as a cold one, exits with the same code, stays under the memory guard, dies with
its runner process, and starts cold whenever the server could not run it as it would have run.

Real processes on the tiny Qwen3, CPU; one server for the module (its start is ~7 s of imports).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nvfp4lab import guard, warm

ROOT = Path(__file__).resolve().parents[1]
SERVER = str(ROOT / "scripts" / "runner_server.py")
FP2 = str(ROOT / "scripts" / "run_training_fp2.py")
RT2 = str(ROOT / "scripts" / "run_training2.py")
GUARD = str(ROOT / "scripts" / "guard.py")
ANSWER = ["--max-tokens", "6", "--stop-here", "false", "--check-logits", "false",
          "--timing", "false"]


@pytest.fixture(scope="module")
def server(tiny_qwen, tmp_path_factory):
    """(environment of runners that use the server, runner flags of the tiny model, its log)."""
    tmp = tmp_path_factory.mktemp("warm")
    env = dict(os.environ, NVFP4LAB_RUNNER_SERVER=str(tmp / "s.sock"), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, SERVER, "--detach", "--idle-exit", "300",
                        "--log", str(tmp / "server.log")], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr + (tmp / "server.log").read_text()
    tiny_dir, tiny_dat = tiny_qwen
    yield (env, ["--model-dir", str(tiny_dir), "--weight", str(tiny_dat), "--device", "cpu"],
           tmp / "server.log")
    subprocess.run([sys.executable, SERVER, "--stop"], env=env, timeout=60)


def run(env, *cmd, timeout=240):
    return subprocess.run([sys.executable, *map(str, cmd)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def test_a_runner_handed_to_the_server_answers_and_exits_as_a_cold_one(server):
    env, tiny, _ = server
    cold_env = dict(env, NVFP4LAB_RUNNER_SERVER="off")
    for script, args in ((FP2, ANSWER), (RT2, ["--prompt", "你是誰", "--max-tokens", "8",
                                               "--check-logits", "false", "--timing", "false"])):
        warm_run, cold_run = run(env, script, *args, *tiny), run(cold_env, script, *args, *tiny)
        assert "[warm] running in a child" in warm_run.stderr
        assert "[warm]" not in cold_run.stderr
        assert warm_run.returncode == cold_run.returncode == 0, warm_run.stderr
        assert warm_run.stdout == cold_run.stdout and "out:" in warm_run.stdout
    # a user error: the same one line and code, through the server or not
    warm_bad, cold_bad = run(env, FP2, "--bogus", "1", *tiny), run(cold_env, FP2, "--bogus", "1", *tiny)
    assert warm_bad.returncode == cold_bad.returncode == 2
    assert warm_bad.stderr.splitlines()[-1] == cold_bad.stderr.splitlines()[-1]


def test_the_guard_measures_and_kills_a_warm_child(server):
    env, tiny, log = server
    r = run(env, GUARD, "--mode", "host", "--gpu-limit-gb", "0.05", "--",
            sys.executable, FP2, *tiny, "--max-tokens", "100000", "--ignore-eos", "true",
            "--timing", "false")
    assert r.returncode == 124, r.stdout + r.stderr
    # the child's pid from the server's log (the guard may kill the runner before it says it)
    line = [x for x in log.read_text().splitlines() if "--max-tokens 100000" in x][-1]
    child = int(line.split("child ")[1].split(":")[0])
    assert "procs=2" in r.stderr    # the runner and its adopted child, measured together
    time.sleep(0.5)
    assert warm.start_time(child) is None or _zombie(child)
    assert not any(Path(warm.private_dir(), "adopted").glob("*-*")) or _only_others()


def test_a_killed_runner_takes_its_child_along(server):
    env, tiny, _ = server
    p = subprocess.Popen([sys.executable, FP2, *tiny, "--max-tokens", "100000", "--ignore-eos",
                          "true", "--timing", "false"], env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    child = int(line.split("running in a child (pid ")[1].split(")")[0])
    assert warm.start_time(child) is not None
    p.send_signal(signal.SIGKILL)
    p.wait()
    for _ in range(100):
        if warm.start_time(child) is None or _zombie(child):
            break
        time.sleep(0.1)
    assert warm.start_time(child) is None or _zombie(child), "the child outlived its runner"


def _zombie(pid) -> bool:
    st = guard.read_stat(pid)
    return st is None or st[3] == "Z"


def _only_others() -> bool:
    """Adoption records left are another test run's (their runner pid is alive), not ours."""
    for rec in Path(warm.private_dir(), "adopted").glob("*-*"):
        pid, start = map(int, rec.name.split("-"))
        if warm.start_time(pid) != start:
            return False
    return True


def test_the_server_refuses_what_it_could_not_run_as_a_cold_start(tmp_path):
    stamp = warm.sources_stamp()
    ok = {"script": FP2, "argv": [], "cwd": str(tmp_path), "python": sys.executable,
          "flags": list(sys.flags), "env": dict(warm.START_ENV)}
    assert warm.refusal(ok, stamp) is None
    # what is read only at run time may differ: the GPU a run is given, the socket's own path
    assert warm.refusal({**ok, "env": {**ok["env"], "CUDA_VISIBLE_DEVICES": "3",
                                       warm.SOCKET_ENV: "/x.sock"}}, stamp) is None
    why = warm.refusal({**ok, "env": {**ok["env"], "TORCH_LOGS": "+dynamo"}}, stamp)
    assert "TORCH_LOGS" in why
    assert "NVFP4LAB_DEVLOG" in warm.refusal(
        {**ok, "env": {**ok["env"], "NVFP4LAB_DEVLOG": "/elsewhere.md"}}, stamp)
    assert "not one of this checkout's runners" in warm.refusal(
        {**ok, "script": str(ROOT / "scripts" / "train.py")}, stamp)
    assert "another Python" in warm.refusal({**ok, "python": "/usr/bin/python2"}, stamp)
    stale = dict(stamp)
    stale[next(iter(stale))] -= 1
    assert "sources changed" in warm.refusal(ok, stale)


def test_no_server_means_a_cold_start(tiny_qwen, tmp_path):
    tiny_dir, tiny_dat = tiny_qwen
    env = dict(os.environ, NVFP4LAB_RUNNER_SERVER=str(tmp_path / "none.sock"),
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    (tmp_path / "none.sock").write_text("")   # a stale socket file, no server behind it
    r = run(env, FP2, *ANSWER, "--model-dir", tiny_dir, "--weight", tiny_dat, "--device", "cpu")
    assert r.returncode == 0 and "out:" in r.stdout
    assert "starting cold" in r.stderr


def test_a_runner_forked_from_the_server_imports_no_transformers_module(tiny_qwen):
    """What makes a warm start fast: every module a runner needs is already imported."""
    tiny_dir, tiny_dat = tiny_qwen
    code = f"""
import runpy, sys
sys.path.insert(0, {str(ROOT / 'scripts')!r})
sys.argv = ["runner_server.py"]
import runner_server
runner_server.preload()
from nvfp4lab import warm
warm.IN_CHILD = True
before = set(sys.modules)
sys.argv = [{FP2!r}, *{ANSWER!r}, "--model-dir", {str(tiny_dir)!r}, "--weight", {str(tiny_dat)!r}, "--device", "cpu"]
try:
    runpy.run_path({FP2!r}, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
late = sorted(m for m in set(sys.modules) - before if m.startswith(("transformers", "nvfp4lab")))
print("LATE", late)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    assert "LATE []" in r.stdout, r.stdout[-2000:]


def test_a_server_started_for_a_recipe_ends_with_it(tmp_path):
    """make stageG/demo/demo-real start a server with --owner (their recipe shell): once that
    process has ended, the server exits instead of idling on."""
    owner = subprocess.Popen(["sleep", "600"])
    env = dict(os.environ, NVFP4LAB_RUNNER_SERVER=str(tmp_path / "s.sock"))
    r = subprocess.run([sys.executable, SERVER, "--detach", "--idle-exit", "600", "--owner",
                        str(owner.pid), "--log", str(tmp_path / "server.log")], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([sys.executable, SERVER, "--status"], env=env).returncode == 0
    owner.kill()
    owner.wait()
    for _ in range(100):
        if not (tmp_path / "s.sock").exists():
            break
        time.sleep(0.1)
    assert not (tmp_path / "s.sock").exists()
    assert f"owner pid {owner.pid} ended: exiting" in (tmp_path / "server.log").read_text()
