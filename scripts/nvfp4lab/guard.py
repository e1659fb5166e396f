"""GPU memory guard: run a command, kill its whole process tree when it uses too much memory.

Mirrors the original `run-script-with-guard.fsx`, which every command ran under because a
runaway training run froze a 128 GB unified-memory DGX Spark:

    python3 scripts/guard.py --gpu-limit-gb 108 --gpu-over-secs 0 --gpu-poll-secs 0.5 \
        script scripts/train.py <args...>
    python3 scripts/guard.py --mode host --gpu-limit-gb 8 -- make something

What it measures (`--mode`):
  gpu   NVML (nvidia-ml-py): `child` = memory of the compute processes in the child's tree,
        `total` = memory used on the device(s) (or, where the device query is NotSupported as
        on GB10, the sum over all compute processes, as the original). `--measure` picks which
        is compared to the limit; `either` (default) kills when either exceeds it.
  host  sum of the RSS of the child's process tree, from /proc. It still protects where NVML
        cannot see the usage, and makes the kill path testable on a CPU box.
  auto  (default) gpu when NVML works; host when NVML is absent; gpu+host on unified memory
        (device query NotSupported, as GB10), where the limit applies to the larger of the
        NVML figure and the tree's RSS: NVML per-process figures there may read 0, and RSS
        alone may miss driver-owned CUDA memory, so neither is dropped.

Exit code: the child's own (128+signum when a signal ended it), 124 when the guard killed it,
128+signum when the guard itself got SIGINT/SIGTERM/SIGHUP (130/143/129), 2 for usage errors.
The limit is in GiB (2**30 bytes), the same unit as the MiB figures in the log.
"""
import ctypes
import datetime
import math
import os
import select
import shlex
import signal
import subprocess
import sys
import time

MIB = 1 << 20
GIB = 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
MIN_POLL_SECS = 0.05  # the original floors the poll interval here
ZERO_WARN_SECS = 2.0  # NVML per-process figures all zero this long while compared -> warn once
NOTICE_FRACTION = 0.05  # a memory line is logged when the figure moves by 5% of the limit...
NOTICE_MIN_BYTES = 32 * MIB  # ...but never for less than this
KILL_WAIT_SECS = 10.0  # how long SIGKILL may take (D-state processes in driver teardown)
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

USAGE = ("usage: guard.py [--gpu-limit-gb GB] [--gpu-over-secs S] [--gpu-poll-secs S] "
         "[--kill-grace-secs S] [--measure child|total|either] [--mode auto|gpu|host] "
         "[--report-secs S] [--log FILE] (script FILE [ARGS...] | -- COMMAND [ARGS...])")

HELP = USAGE + """

  --gpu-limit-gb GB      memory limit in GiB, float (default 108)
  --gpu-over-secs S      kill once above the limit for S seconds (default 0 = at once)
  --gpu-poll-secs S      poll interval, floored at 0.05 (default 0.5)
  --kill-grace-secs S    SIGTERM, then SIGKILL after S seconds (default 2; 0 = SIGKILL at once)
  --measure M            gpu mode: child | total | either (default either)
  --mode M               auto | gpu | host (default auto: gpu where NVML works, host where it
                         is absent, both where it cannot read device memory; host = RSS sum
                         of the child's process tree)
  --report-secs S        log a memory line at least every S seconds (default 30)
  --log FILE             append a one-line summary to FILE
  script FILE ARGS...    run `python FILE ARGS...` with this interpreter
  -- COMMAND ARGS...     run any command
"""


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------------- arguments

def _number(name, text, minimum, strict):
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{name} needs a number, got {text!r}")
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        raise UsageError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {text!r}")
    return v


def _choice(choices):
    def check(name, text):
        if text not in choices:
            raise UsageError(f"{name} must be one of {'|'.join(choices)}, got {text!r}")
        return text
    return check


# flag -> (key, converter). Converters raise UsageError; the original rejects values <= 0
# (over-secs < 0) with exit 2.
FLAGS = {
    "--gpu-limit-gb": ("limit_gb", lambda n, t: _number(n, t, 0, strict=True)),
    "--gpu-over-secs": ("over_secs", lambda n, t: _number(n, t, 0, strict=False)),
    "--gpu-poll-secs": ("poll_secs", lambda n, t: _number(n, t, 0, strict=True)),
    "--kill-grace-secs": ("grace_secs", lambda n, t: _number(n, t, 0, strict=False)),
    "--report-secs": ("report_secs", lambda n, t: _number(n, t, 0, strict=True)),
    "--measure": ("measure", _choice(("child", "total", "either"))),
    "--mode": ("mode", _choice(("auto", "gpu", "host"))),
    "--log": ("log", lambda n, t: t),
}


def parse_args(argv):
    """argv (without the program name) -> dict of settings + 'cmd'. Raises UsageError.

    Hand-rolled rather than argparse: the command after `script`/`--` must be taken verbatim,
    including its own `--flags`, which argparse.REMAINDER gets wrong in corner cases."""
    a = dict(limit_gb=108.0, limit_text="108", over_secs=0.0, poll_secs=0.5, grace_secs=2.0,
             report_secs=30.0, measure="either", mode="auto", log=None, cmd=None, help=False)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            a["help"] = True
            return a
        if arg == "--":
            a["cmd"] = argv[i + 1:]
            break
        if arg == "script":
            if i + 1 >= len(argv):
                raise UsageError("'script' needs a script path")
            a["cmd"] = [sys.executable] + argv[i + 1:]
            break
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r} "
                             "(the command goes after 'script' or '--')")
        name, eq, value = arg.partition("=")
        if name not in FLAGS:
            raise UsageError(f"unknown flag {name}")
        if not eq:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value")
            i += 1
            value = argv[i]
        key, convert = FLAGS[name]
        a[key] = convert(name, value)
        if key == "limit_gb":
            a["limit_text"] = value  # printed as given: "0.25", not "0.25000"
        i += 1
    if not a["cmd"]:
        raise UsageError("missing command (script FILE [ARGS...] or -- COMMAND [ARGS...])")
    a["poll_secs"] = max(a["poll_secs"], MIN_POLL_SECS)
    return a


# ------------------------------------------------------------------------------- process tree

def read_stat(pid):
    """(ppid, sid, starttime, state) of a pid from /proc/<pid>/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm is in parentheses and may itself hold spaces or ')': split after the last ')'
    rest = data[data.rfind(b")") + 2:].split()
    return int(rest[1]), int(rest[3]), int(rest[19]), rest[0].decode()


def scan_procs():
    """pid -> (ppid, sid, starttime, state) for every process. A full /proc scan rather than
    /proc/<pid>/task/*/children: that file needs CONFIG_PROC_CHILDREN, which not every kernel
    has, and the scan is a few ms even with hundreds of processes."""
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                procs[int(name)] = st
    return procs


def child_tree_pids(root, seen=None, parents=(), procs=None):
    """Live (non-zombie) processes of root's tree: pid -> starttime.

    Roots of the walk: root itself, every pid in `seen` (pid -> starttime, updated in place)
    that is still the same process, every member of root's session (root is its leader), and
    the children of `parents` (the guard, when it is a subreaper and orphans land on it). A
    grandchild that called setsid() and whose parent died is reparented away from the tree,
    so it is found only because an earlier poll remembered it in `seen`."""
    procs = scan_procs() if procs is None else procs
    seen = {} if seen is None else seen
    kids = {}
    for pid, (ppid, sid, start, state) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    todo = [root] + [p for p, start in seen.items() if p in procs and procs[p][2] == start]
    todo += [p for p, st in procs.items() if st[1] == root]
    for parent in parents:
        todo += kids.get(parent, [])
    tree = {}
    while todo:
        pid = todo.pop()
        if pid in tree or pid not in procs or pid == os.getpid():
            continue
        tree[pid] = procs[pid][2]
        todo += kids.get(pid, [])
    seen.update(tree)
    # zombies hold no memory and cannot be signalled; they stay walkable above, but not listed
    return {p: s for p, s in tree.items() if procs[p][3] != "Z"}


def tree_rss_bytes(pids):
    """Sum of resident set sizes (bytes) of pids, from /proc/<pid>/statm. Shared pages count
    once per process, so this overestimates a forked tree a little: safe for a guard."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def signal_tree(tree, sig):
    """Send sig to every pid of tree (pid -> starttime), skipping pids that were reused."""
    for pid, start in tree.items():
        st = read_stat(pid)
        if st is None or st[2] != start:
            continue  # gone, or the pid now belongs to an unrelated process
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# ----------------------------------------------------------------------------------------- NVML

def nvml_open():
    """(pynvml module, device handles), or (None, reason) when NVML cannot be used here."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, f"{type(e).__name__}: {e}"
    try:
        n = pynvml.nvmlDeviceGetCount()
        if n == 0:
            pynvml.nvmlShutdown()
            return None, "NVML sees no GPU"
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def nvml_usage(nv, handles, tree_pids):
    """One NVML reading. Returns dict:
      child      bytes used by compute processes whose pid is in tree_pids
      total      bytes used on all devices; where the device query is NotSupported (GB10)
                 the sum over all compute processes instead, as the original
      device_ok  False when some device answered NotSupported for its memory
      nonzero    True when any per-process figure was > 0
    NVML's per-process pids are host pids: inside a container's pid namespace they do not
    match tree_pids, so `child` reads 0 there; `either` still has `total`."""
    child = total_dev = total_procs = 0
    device_ok, nonzero = True, False
    for h in handles:
        try:
            total_dev += nv.nvmlDeviceGetMemoryInfo(h).used
        except nv.NVMLError:
            device_ok = False
        try:
            procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
        except nv.NVMLError:
            procs = []
        for p in procs:
            used = p.usedGpuMemory or 0  # None = "not available" (unified memory, WDDM)
            nonzero = nonzero or used > 0
            total_procs += used
            if p.pid in tree_pids:
                child += used
    return dict(child=child, total=total_dev if device_ok else total_procs,
                device_ok=device_ok, nonzero=nonzero)


# ---------------------------------------------------------------------------------- the guard

def _log(msg):
    print(f"[guard] {msg}", file=sys.stderr, flush=True)


def _cmd_text(cmd):
    return shlex.join(cmd).replace("\n", "\\n")  # log lines stay one line each


def _mib(b):
    return f"{b / MIB:.0f}MiB"


def become_subreaper():
    """Make orphaned descendants reparent to us instead of init, so a grandchild whose parent
    died is still found (as our child) and its zombie is reaped by us. Linux only."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _child_setup(guard_pid):
    """preexec_fn: the child dies with SIGKILL if the guard itself is killed (even kill -9),
    so a dead guard leaves no unguarded runaway behind (its grandchildren are then only
    covered by their own parents)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != guard_pid:  # the guard died before prctl took effect
        os._exit(1)


def run_guarded(cmd, limit_gb=108.0, limit_text=None, over_secs=0.0, poll_secs=0.5,
                grace_secs=2.0, measure="either", mode="auto", report_secs=30.0, log=None,
                subreaper=False):
    """Run cmd, polling its memory; returns the guard's exit code (see module doc).

    subreaper=True (the CLI) also reaps orphans with waitpid(-1): only for a process whose
    children are all the guard's, never inside a larger program such as pytest."""
    limit = limit_gb * GIB
    limit_text = limit_text or f"{limit_gb:g}"
    poll_secs = max(poll_secs, MIN_POLL_SECS)
    t0 = time.monotonic()
    nv = handles = None
    if mode != "host":
        nv, handles = nvml_open()
        if nv is None:
            if mode == "gpu":
                _log(f"--mode gpu but NVML is unavailable ({handles})")
                return 2
            _log(f"NVML unavailable ({handles}); host-memory mode: the limit applies to the "
                 "RSS sum of the child's process tree")
            mode = "host"
        elif mode == "auto":
            mode = "gpu"
            if not nvml_usage(nv, handles, {})["device_ok"]:
                _log("NVML cannot read device memory (NotSupported: unified memory?); gpu+host "
                     "mode: the limit applies to the larger of the NVML figure and the RSS sum "
                     "of the child's process tree")
                mode = "gpu+host"
    subreaper = subreaper and become_subreaper()

    # Signals become bytes on a pipe, so the poll's select() wakes at once and no handler
    # ever runs guard logic re-entrantly. They stay caught until the tree is dead.
    pending = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_handlers = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def wait(secs, fds=()):
        if secs > 0:
            ready, _, _ = select.select([wake_r, *fds], [], [], secs)
            if wake_r in ready:
                try:
                    os.read(wake_r, 512)
                except BlockingIOError:
                    pass

    proc = pidfd = None
    status = None  # child's exit code once reaped
    seen = {}  # every descendant ever seen: pid -> starttime
    guard_pid = os.getpid()

    def reap():
        nonlocal status
        while True:
            try:
                pid, st = os.waitpid(-1 if subreaper else proc.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == proc.pid:
                status = os.waitstatus_to_exitcode(st)
                status = -status + 128 if status < 0 else status
                proc.returncode = status  # keeps Popen from warning it is "still running"
            if not subreaper:
                return

    def tree():
        return child_tree_pids(proc.pid, seen, (guard_pid,) if subreaper else ())

    def kill_tree(first_sig, why):
        """first_sig to every process of the tree, then SIGKILL after grace_secs; loops until
        nothing of the tree is alive, catching processes forked while it runs."""
        n_signals = len(pending)
        deadline = time.monotonic() + grace_secs
        sent = set()
        while True:
            reap()
            alive = tree()
            if not alive:
                return
            # a second Ctrl-C (or any further signal) while waiting means: no more grace
            if time.monotonic() >= deadline or len(pending) > n_signals:
                break
            new = {p: s for p, s in alive.items() if p not in sent}
            if new:
                if not sent:
                    _log(f"{why}: sending {signal.Signals(first_sig).name} to {len(alive)} "
                         f"process(es) {sorted(alive)}")
                signal_tree(new, first_sig)
                signal_tree(new, signal.SIGCONT)  # a stopped process cannot act on it
                sent.update(new)
            wait(0.02)
        _log(f"SIGKILL to {len(alive)} process(es) {sorted(alive)}")
        deadline = time.monotonic() + KILL_WAIT_SECS
        while alive and time.monotonic() < deadline:
            signal_tree(alive, signal.SIGKILL)
            wait(0.02)
            reap()
            alive = tree()
        if alive:
            _log(f"WARNING: still alive after SIGKILL: {sorted(alive)}")

    reason, code, peak, guard_sig = "exited", None, 0, None
    try:
        try:
            proc = subprocess.Popen(cmd, start_new_session=True,
                                    preexec_fn=lambda: _child_setup(guard_pid))
        except OSError as e:
            _log(f"cannot start {_cmd_text(cmd)}: {e}")
            return 127 if isinstance(e, FileNotFoundError) else 126  # as a shell would
        try:
            pidfd = os.pidfd_open(proc.pid)  # readable when the child exits: wakes the poll
        except (AttributeError, OSError):
            pidfd = None
        _log(f"start guard_pid={guard_pid} child_pid={proc.pid} limit={limit_text} GB "
             f"({_mib(limit)}) mode={mode}{'' if mode == 'host' else ' measure=' + measure} "
             f"poll={poll_secs:g}s over={over_secs:g}s grace={grace_secs:g}s cmd={_cmd_text(cmd)}")
        notice = max(NOTICE_MIN_BYTES, NOTICE_FRACTION * limit)
        last_val, last_log_t = None, 0.0
        over_since = zero_since = None
        warned_zero = False
        while True:
            reap()
            if status is not None:
                break
            if pending:
                guard_sig = pending[0]
                reason = "interrupted"
                kill_tree(guard_sig, f"guard got {signal.Signals(guard_sig).name}")
                break
            alive = tree()
            now = time.monotonic()
            val, line = 0, f"PID={proc.pid}"
            if mode != "host":
                u = nvml_usage(nv, handles, alive)
                if measure == "child":
                    val = u["child"]
                elif measure == "total":
                    val = u["total"]
                else:
                    val = max(u["child"], u["total"])
                line += f" gpu_mem={_mib(u['child'])} total_gpu_mem={_mib(u['total'])}"
                # NVML that sees nothing for what is compared: per-process figures of 0 on GB10
                # (the original warned too), or container pids that do not match NVML's
                blind = not u["device_ok"] and not u["nonzero"]
                if blind or (measure == "child" and u["child"] == 0):
                    zero_since = now if zero_since is None else zero_since
                    if now - zero_since >= ZERO_WARN_SECS and not warned_zero:
                        _log(f"WARNING: NVML figures read only zeros for {ZERO_WARN_SECS:g}s so far"
                             + (" (host RSS still guards)" if mode == "gpu+host" else
                                "; consider --measure total or --mode host"))
                        warned_zero = True
                else:
                    zero_since = None
            if mode != "gpu":
                rss = tree_rss_bytes(alive)
                val = max(val, rss)
                line += f" rss={_mib(rss)} procs={len(alive)}"
            peak = max(peak, val)
            if last_val is None or abs(val - last_val) >= notice or now - last_log_t >= report_secs:
                _log(line)
                last_val, last_log_t = val, now
            if val > limit:
                over_since = now if over_since is None else over_since
                if now - over_since >= over_secs:
                    reason = "killed"
                    _log(f"KILL: memory {_mib(val)} > limit {limit_text} GB ({_mib(limit)}) "
                         f"for {now - over_since:.1f}s ({line})")
                    kill_tree(signal.SIGTERM, "limit exceeded")
                    break
                if now == over_since:
                    _log(f"over limit ({_mib(val)} > {_mib(limit)}); killing in {over_secs:g}s "
                         "unless it drops")
            else:
                over_since = None
            wait(poll_secs, [pidfd] if pidfd is not None else [])
    finally:
        # No orphans, whatever happened above (a child that left background processes behind,
        # or an exception in the guard's own code): the tree dies with the guard.
        if proc is not None:
            try:
                reap()
                left = tree()
                if left:
                    if reason == "exited" and status is not None:
                        _log(f"child exited; {len(left)} leftover process(es) {sorted(left)}")
                    kill_tree(signal.SIGTERM, "cleanup")
                if status is None:  # not reaped yet: it was just killed, collect it
                    try:
                        proc.wait(timeout=KILL_WAIT_SECS)
                        status = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                    except subprocess.TimeoutExpired:
                        _log(f"WARNING: child {proc.pid} did not exit after SIGKILL")
            finally:
                if pidfd is not None:
                    os.close(pidfd)
        signal.set_wakeup_fd(old_wakeup)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        os.close(wake_r)
        os.close(wake_w)
        if nv is not None:
            try:
                nv.nvmlShutdown()
            except Exception:
                pass
    if reason == "killed":
        code = 124
    elif reason == "interrupted":
        code = 128 + guard_sig
    else:
        code = status
    summary = (f"reason={reason} exit={code} peak_mem={_mib(peak)} "
               f"duration={time.monotonic() - t0:.2f}s mode={mode}")
    _log(f"done {summary}")
    if log:
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        with open(log, "a") as f:
            f.write(f"{stamp} {summary} limit_gb={limit_text} cmd={_cmd_text(cmd)}\n")
    return code


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        a = parse_args(argv)
    except UsageError as e:
        print(f"guard.py: error: {e}; {USAGE}", file=sys.stderr)
        return 2
    if a["help"]:
        print(HELP)
        return 0
    return run_guarded(a["cmd"], limit_gb=a["limit_gb"], limit_text=a["limit_text"],
                       over_secs=a["over_secs"], poll_secs=a["poll_secs"],
                       grace_secs=a["grace_secs"], measure=a["measure"], mode=a["mode"],
                       report_secs=a["report_secs"], log=a["log"], subreaper=True)
