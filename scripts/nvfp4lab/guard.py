"""GPU memory guard: run a command, kill its whole process tree when it uses too much memory.

Mirrors the original `run-script-with-guard.fsx`, which every command ran under because a
runaway training run froze a 128 GB unified-memory DGX Spark:

    python3 scripts/guard.py script scripts/train.py <args...>    # the original's settings
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
from dataclasses import asdict, dataclass, fields

from . import warm

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



@dataclass(frozen=True)
class GuardSettings:
    """What the guard compares and when it kills. The defaults are the original's settings
    (`--gpu-limit-gb 108 --gpu-over-secs 0 --gpu-poll-secs 0.5`), which every command ran under:
    this is their one home (the CLI, its --help, validate.py and the Makefile use it)."""
    limit_gb: float = 108.0    # GiB
    over_secs: float = 0.0     # kill once above the limit this long; 0 = at once
    poll_secs: float = 0.5     # floored at MIN_POLL_SECS
    grace_secs: float = 2.0    # SIGTERM, then SIGKILL after this; 0 = SIGKILL at once
    report_secs: float = 30.0  # a memory line at least this often
    measure: str = "either"    # gpu mode: child | total | either
    mode: str = "auto"         # auto | gpu | host

    def original_flags(self) -> list[str]:
        """The three settings of the original's command line, as guard.py flags."""
        return ["--gpu-limit-gb", f"{self.limit_gb:g}", "--gpu-over-secs", f"{self.over_secs:g}",
                "--gpu-poll-secs", f"{self.poll_secs:g}"]


DEFAULTS = GuardSettings()

USAGE = ("usage: guard.py [--gpu-limit-gb GB] [--gpu-over-secs S] [--gpu-poll-secs S] "
         "[--kill-grace-secs S] [--measure child|total|either] [--mode auto|gpu|host] "
         "[--report-secs S] [--log FILE] (script FILE [ARGS...] | -- COMMAND [ARGS...])")

HELP = USAGE + """

  --gpu-limit-gb GB      memory limit in GiB, float (default {limit_gb:g})
  --gpu-over-secs S      kill once above the limit for S seconds (default {over_secs:g} = at once)
  --gpu-poll-secs S      poll interval, floored at {min_poll:g} (default {poll_secs:g})
  --kill-grace-secs S    SIGTERM, then SIGKILL after S seconds (default {grace_secs:g}; 0 = SIGKILL at once)
  --measure M            gpu mode: child | total | either (default {measure})
  --mode M               auto | gpu | host (default {mode}: gpu where NVML works, host where it
                         is absent, both where it cannot read device memory; host = RSS sum
                         of the child's process tree)
  --report-secs S        log a memory line at least every S seconds (default {report_secs:g})
  --log FILE             append a one-line summary to FILE
  script FILE ARGS...    run `python FILE ARGS...` with this interpreter
  -- COMMAND ARGS...     run any command
""".format(min_poll=MIN_POLL_SECS, **asdict(DEFAULTS))


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
    a = dict(asdict(DEFAULTS), limit_text=f"{DEFAULTS.limit_gb:g}", log=None, cmd=None,
             help=False)
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
    so it is found only because an earlier poll remembered it in `seen`. A runner handed to the
    warm runner server has its child there, recorded as adopted (warm.adopted): walked too."""
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
        todo += warm.adopted(pid, procs)   # a runner's child forked by the warm runner server
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


class Guard:
    """One guarded run of `cmd`: start it, poll its memory, kill its tree when it stays over the
    limit, and leave no process of the tree behind whatever happens. run() returns the exit code
    (module doc).

    subreaper=True (the CLI) also reaps orphans with waitpid(-1): only for a process whose
    children are all the guard's, never inside a larger program such as pytest."""

    def __init__(self, cmd, settings: GuardSettings, limit_text=None, log=None, subreaper=False):
        self.cmd, self.s, self.log_path, self.subreaper = cmd, settings, log, subreaper
        self.limit = settings.limit_gb * GIB
        self.limit_text = limit_text or f"{settings.limit_gb:g}"
        self.poll_secs = max(settings.poll_secs, MIN_POLL_SECS)
        self.notice = max(NOTICE_MIN_BYTES, NOTICE_FRACTION * self.limit)
        self.mode = settings.mode
        self.nv = self.handles = None
        self.proc = self.pidfd = None
        self.status = None      # the child's exit code once reaped
        self.seen = {}          # every descendant ever seen: pid -> starttime
        self.pending = []       # signals the guard got, in order
        self.guard_pid = os.getpid()
        self.reason, self.peak, self.guard_sig = "exited", 0, None
        self.last_val, self.last_log_t = None, 0.0   # the last memory line logged
        self.over_since = self.zero_since = None     # when the figure went over / read zero
        self.warned_zero = False

    def run(self) -> int:
        self.t0 = time.monotonic()
        if not self._open_nvml():
            return 2
        self.subreaper = self.subreaper and become_subreaper()
        self._catch_signals()
        try:
            failed = self._start()
            if failed is not None:
                return failed
            self._poll()
        finally:
            self._cleanup()
        return self._finish()

    # ------------------------------------------------------------------------ the poll loop

    def _poll(self) -> None:
        """Until the child exits, the guard is signalled, or the memory stays over the limit."""
        while True:
            self._reap()
            if self.status is not None:
                return
            if self.pending:
                self.guard_sig, self.reason = self.pending[0], "interrupted"
                self._kill_tree(self.guard_sig, f"guard got {signal.Signals(self.guard_sig).name}")
                return
            alive = self._tree()
            now = time.monotonic()
            val, line = self._measure(alive, now)
            self.peak = max(self.peak, val)
            if (self.last_val is None or abs(val - self.last_val) >= self.notice
                    or now - self.last_log_t >= self.s.report_secs):
                _log(line)
                self.last_val, self.last_log_t = val, now
            if self._over_for_too_long(val, line, now):
                self.reason = "killed"
                self._kill_tree(signal.SIGTERM, "limit exceeded")
                return
            self._wait(self.poll_secs, [self.pidfd] if self.pidfd is not None else [])

    def _measure(self, alive, now) -> tuple[int, str]:
        """(bytes compared with the limit, the memory log line) for the tree as it is now."""
        val, line = 0, f"PID={self.proc.pid}"
        if self.mode != "host":
            u = nvml_usage(self.nv, self.handles, alive)
            if self.s.measure == "child":
                val = u["child"]
            elif self.s.measure == "total":
                val = u["total"]
            else:
                val = max(u["child"], u["total"])
            line += f" gpu_mem={_mib(u['child'])} total_gpu_mem={_mib(u['total'])}"
            self._warn_if_nvml_blind(u, now)
        if self.mode != "gpu":
            rss = tree_rss_bytes(alive)
            val = max(val, rss)
            line += f" rss={_mib(rss)} procs={len(alive)}"
        return val, line

    def _warn_if_nvml_blind(self, u, now) -> None:
        # NVML that sees nothing for what is compared: per-process figures of 0 on GB10 (the
        # original warned too), or container pids that do not match NVML's
        blind = not u["device_ok"] and not u["nonzero"]
        if not (blind or (self.s.measure == "child" and u["child"] == 0)):
            self.zero_since = None
            return
        self.zero_since = now if self.zero_since is None else self.zero_since
        if now - self.zero_since >= ZERO_WARN_SECS and not self.warned_zero:
            _log(f"WARNING: NVML figures read only zeros for {ZERO_WARN_SECS:g}s so far"
                 + (" (host RSS still guards)" if self.mode == "gpu+host" else
                    "; consider --measure total or --mode host"))
            self.warned_zero = True

    def _over_for_too_long(self, val, line, now) -> bool:
        """True (logged) once val has been over the limit for over_secs; 0 = at the first poll."""
        if val <= self.limit:
            self.over_since = None
            return False
        self.over_since = now if self.over_since is None else self.over_since
        if now - self.over_since >= self.s.over_secs:
            _log(f"KILL: memory {_mib(val)} > limit {self.limit_text} GB ({_mib(self.limit)}) "
                 f"for {now - self.over_since:.1f}s ({line})")
            return True
        if now == self.over_since:
            _log(f"over limit ({_mib(val)} > {_mib(self.limit)}); killing in "
                 f"{self.s.over_secs:g}s unless it drops")
        return False

    # ------------------------------------------------------------------------ start and end

    def _open_nvml(self) -> bool:
        """Settle the mode (module doc); False when --mode gpu cannot have NVML."""
        if self.mode == "host":
            return True
        self.nv, self.handles = nvml_open()
        if self.nv is None:
            if self.mode == "gpu":
                _log(f"--mode gpu but NVML is unavailable ({self.handles})")
                return False
            _log(f"NVML unavailable ({self.handles}); host-memory mode: the limit applies to the "
                 "RSS sum of the child's process tree")
            self.mode = "host"
        elif self.mode == "auto":
            self.mode = "gpu"
            if not nvml_usage(self.nv, self.handles, {})["device_ok"]:
                _log("NVML cannot read device memory (NotSupported: unified memory?); gpu+host "
                     "mode: the limit applies to the larger of the NVML figure and the RSS sum "
                     "of the child's process tree")
                self.mode = "gpu+host"
        return True

    def _catch_signals(self) -> None:
        # Signals become bytes on a pipe, so the poll's select() wakes at once and no handler
        # ever runs guard logic re-entrantly. They stay caught until the tree is dead.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.old_wakeup = signal.set_wakeup_fd(self.wake_w)
        self.old_handlers = {s: signal.signal(s, lambda signum, frame: self.pending.append(signum))
                             for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def _start(self):
        """Start the child; None, or the exit code when it cannot start (as a shell's)."""
        guard_pid, cmd = self.guard_pid, self.cmd
        try:
            self.proc = subprocess.Popen(cmd, start_new_session=True,
                                         preexec_fn=lambda: _child_setup(guard_pid))
        except OSError as e:
            _log(f"cannot start {_cmd_text(cmd)}: {e}")
            return 127 if isinstance(e, FileNotFoundError) else 126
        try:
            # readable when the child exits: wakes the poll at once
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        s = self.s
        _log(f"start guard_pid={guard_pid} child_pid={self.proc.pid} limit={self.limit_text} GB "
             f"({_mib(self.limit)}) mode={self.mode}"
             f"{'' if self.mode == 'host' else ' measure=' + s.measure} poll={self.poll_secs:g}s "
             f"over={s.over_secs:g}s grace={s.grace_secs:g}s cmd={_cmd_text(cmd)}")
        return None

    def _cleanup(self) -> None:
        # No orphans, whatever happened (a child that left background processes behind, or an
        # exception in the guard's own code): the tree dies with the guard.
        if self.proc is not None:
            try:
                self._reap()
                left = self._tree()
                if left:
                    if self.reason == "exited" and self.status is not None:
                        _log(f"child exited; {len(left)} leftover process(es) {sorted(left)}")
                    self._kill_tree(signal.SIGTERM, "cleanup")
                if self.status is None:   # not reaped yet: it was just killed, collect it
                    try:
                        self.proc.wait(timeout=KILL_WAIT_SECS)
                        rc = self.proc.returncode
                        self.status = rc if rc >= 0 else 128 - rc
                    except subprocess.TimeoutExpired:
                        _log(f"WARNING: child {self.proc.pid} did not exit after SIGKILL")
            finally:
                if self.pidfd is not None:
                    os.close(self.pidfd)
        signal.set_wakeup_fd(self.old_wakeup)
        for s, h in self.old_handlers.items():
            signal.signal(s, h)
        os.close(self.wake_r)
        os.close(self.wake_w)
        if self.nv is not None:
            try:
                self.nv.nvmlShutdown()
            except Exception:
                pass

    def _finish(self) -> int:
        """The exit code, the `done` line and the --log line."""
        if self.reason == "killed":
            code = 124
        elif self.reason == "interrupted":
            code = 128 + self.guard_sig
        else:
            code = self.status
        summary = (f"reason={self.reason} exit={code} peak_mem={_mib(self.peak)} "
                   f"duration={time.monotonic() - self.t0:.2f}s mode={self.mode}")
        _log(f"done {summary}")
        if self.log_path:
            stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
            with open(self.log_path, "a") as f:
                f.write(f"{stamp} {summary} limit_gb={self.limit_text} cmd={_cmd_text(self.cmd)}\n")
        return code

    # ------------------------------------------------------------------------ the child's tree

    def _wait(self, secs, fds=()) -> None:
        """Sleep up to secs; a signal to the guard (or a readable fd: the child exited) wakes it."""
        if secs > 0:
            ready, _, _ = select.select([self.wake_r, *fds], [], [], secs)
            if self.wake_r in ready:
                try:
                    os.read(self.wake_r, 512)
                except BlockingIOError:
                    pass

    def _reap(self) -> None:
        """Collect the child's exit status (and, as subreaper, every orphan's) without waiting."""
        while True:
            try:
                pid, st = os.waitpid(-1 if self.subreaper else self.proc.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.proc.pid:
                status = os.waitstatus_to_exitcode(st)
                self.status = -status + 128 if status < 0 else status
                self.proc.returncode = self.status  # keeps Popen from warning it is "still running"
            if not self.subreaper:
                return

    def _tree(self):
        return child_tree_pids(self.proc.pid, self.seen,
                               (self.guard_pid,) if self.subreaper else ())

    def _kill_tree(self, first_sig, why) -> None:
        """first_sig to every process of the tree, then SIGKILL after grace_secs; loops until
        nothing of the tree is alive, catching processes forked while it runs."""
        n_signals = len(self.pending)
        deadline = time.monotonic() + self.s.grace_secs
        sent = set()
        while True:
            self._reap()
            alive = self._tree()
            if not alive:
                return
            # a second Ctrl-C (or any further signal) while waiting means: no more grace
            if time.monotonic() >= deadline or len(self.pending) > n_signals:
                break
            new = {p: s for p, s in alive.items() if p not in sent}
            if new:
                if not sent:
                    _log(f"{why}: sending {signal.Signals(first_sig).name} to {len(alive)} "
                         f"process(es) {sorted(alive)}")
                signal_tree(new, first_sig)
                signal_tree(new, signal.SIGCONT)  # a stopped process cannot act on it
                sent.update(new)
            self._wait(0.02)
        _log(f"SIGKILL to {len(alive)} process(es) {sorted(alive)}")
        deadline = time.monotonic() + KILL_WAIT_SECS
        while alive and time.monotonic() < deadline:
            signal_tree(alive, signal.SIGKILL)
            self._wait(0.02)
            self._reap()
            alive = self._tree()
        if alive:
            _log(f"WARNING: still alive after SIGKILL: {sorted(alive)}")


def run_guarded(cmd, limit_text=None, log=None, subreaper=False, **settings) -> int:
    """Run cmd under the guard; `settings` are GuardSettings fields (the rest keep the defaults).
    Returns the guard's exit code (module doc)."""
    return Guard(cmd, GuardSettings(**settings), limit_text, log, subreaper).run()


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
    settings = {f.name: a[f.name] for f in fields(GuardSettings)}
    return run_guarded(a["cmd"], limit_text=a["limit_text"], log=a["log"], subreaper=True,
                       **settings)
