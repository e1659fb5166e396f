"""A warm runner server: the runners' imports paid once, a fresh fork for every runner launch.

Why: on the H200 a runner spends ~11 of its ~12 s before the first token importing torch and
transformers' Qwen3 (doc/BENCHMARKS.md: `import transformers` pulls in torch._dynamo,
torch.distributed.tensor, sympy and sklearn through its own modules), none of which is ours to
make lazy. The server (scripts/runner_server.py) imports all of it once and waits on a Unix
socket. A runner started while it is up hands its argv, cwd, environment and its stdin/stdout/
stderr file descriptors to it; the server forks a child that runs the runner script as
`__main__` with those descriptors, so the child starts with every module loaded but does its
own CUDA init, loading and answering, exactly as a cold runner does. The runner process waits
and exits with the child's code.

Only this module is imported before the hand-over, and it imports nothing heavy. Runs stay
cold (the old path, unchanged) when no server is up, when NVFP4LAB_RUNNER_SERVER=off, or when
the server refuses: sources changed since it started, another Python, or an environment that
differs in a variable read at import time (IMPORT_TIME_ENV).

The memory guard wraps the runner process, not the forked child, so the server records each
child under its runner's pid (adopt) and the guard's process tree includes it (adopted): the
guard measures and kills the child as if the runner had forked it. The child also kills itself
when its runner dies (its socket closes).
"""
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import tempfile

SOCKET_ENV = "NVFP4LAB_RUNNER_SERVER"   # the socket's path; "off" = always start cold
SCRIPTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # .../scripts
# the scripts a server runs (a request names one of them, by path, inside SCRIPTS)
RUNNERS = ("run_training2.py", "run_training_fp2.py", "interactive_chat.py")
# variables read while modules are imported: a child runs with the server's imports, so a runner
# whose value differs from the server's must start cold
# to behave as it would have (nvfp4lab.paths reads NVFP4LAB_DEVLOG and the like at import)
IMPORT_TIME_ENV = ("PYTHON", "TORCH", "PYTORCH", "TRANSFORMERS", "HF_", "HUGGINGFACE",
                   "TOKENIZERS", "OMP_", "MKL_", "OPENBLAS", "LD_", "NVFP4LAB_", "QWEN", "LANG",
                   "LC_")
IN_CHILD = False   # set in a forked child: its runner script must not hand over again
START_ENV = dict(os.environ)   # before any import of the server's (this module comes first)


def private_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"nvfp4lab-runner-{os.getuid()}")


def socket_path() -> str:
    """NVFP4LAB_RUNNER_SERVER, else one socket per checkout in a private folder under /tmp (a
    Unix socket path must stay under ~100 bytes, so it is named by a hash of the checkout)."""
    given = os.environ.get(SOCKET_ENV)
    if given:
        return given
    tag = hashlib.sha1(SCRIPTS.encode()).hexdigest()[:12]
    return os.path.join(private_dir(), f"{tag}.sock")


# ------------------------------------------------------------------------------ adoption
# A child is recorded as adopted/<runner pid>-<runner start time>, holding "<child pid> <child
# start time>": start times (from /proc) make a reused pid match nothing.

def start_time(pid: int) -> int | None:
    from .guard import read_stat   # here, not at the top: guard imports this module
    st = read_stat(pid)
    return None if st is None else st[2]


def _adopt_file(pid: int, start) -> str:
    return os.path.join(private_dir(), "adopted", f"{pid}-{start}")


def adopt(runner_pid: int, child_pid: int) -> str | None:
    """Record child_pid as runner_pid's; returns the record's path (None if either is gone)."""
    rs, cs = start_time(runner_pid), start_time(child_pid)
    if rs is None or cs is None:
        return None
    path = _adopt_file(runner_pid, rs)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(f"{child_pid} {cs}")
    os.replace(path + ".tmp", path)
    return path


def adopted(pid: int, procs: dict) -> list[int]:
    """The child recorded for pid, if pid and the child are the processes recorded (procs: pid ->
    (ppid, sid, start time, state), guard.scan_procs)."""
    if pid not in procs:
        return []
    try:
        with open(_adopt_file(pid, procs[pid][2])) as f:
            child, start = map(int, f.read().split())
    except (OSError, ValueError):
        return []
    return [child] if child in procs and procs[child][2] == start else []


def sources_stamp() -> dict:
    """Modification times of what a child runs: the scripts, the package and the extension. A
    server whose stamp no longer matches serves stale code, so it refuses and exits."""
    pkg = os.path.join(SCRIPTS, "nvfp4lab")
    files = [os.path.join(SCRIPTS, f) for f in os.listdir(SCRIPTS) if f.endswith(".py")]
    files += [os.path.join(pkg, f) for f in os.listdir(pkg) if f.endswith((".py", ".so"))]
    return {f: os.stat(f).st_mtime_ns for f in sorted(files)}


def import_time_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV) and k != SOCKET_ENV}


def set_by_imports() -> dict:
    """What the server's imports put into os.environ (transformers sets TORCHINDUCTOR_CACHE_DIR):
    a cold runner's imports would have set the same, so its child gets them too."""
    return {k: v for k, v in os.environ.items() if START_ENV.get(k) != v}


# ------------------------------------------------------------------------------ the wire
# A message is 4 bytes of length (big-endian) and that much UTF-8 JSON; the request also carries
# the runner's fds 0, 1, 2 as SCM_RIGHTS ancillary data.

def send(conn: socket.socket, msg: dict, fds: tuple = ()) -> None:
    data = json.dumps(msg).encode()
    data = struct.pack(">I", len(data)) + data
    if fds:
        socket.send_fds(conn, [data], list(fds))
    else:
        conn.sendall(data)


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise EOFError("connection closed")
        buf += part
    return buf


def recv(conn: socket.socket, nfds: int = 0) -> tuple[dict, list]:
    """(message, fds). fds come with the first bytes of the message."""
    fds = []
    if nfds:
        head, fds, _, _ = socket.recv_fds(conn, 4, nfds)
        if not head:
            raise EOFError("connection closed")
        head += _recv_exact(conn, 4 - len(head))
    else:
        head = _recv_exact(conn, 4)
    (n,) = struct.unpack(">I", head)
    return json.loads(_recv_exact(conn, n)), fds


# ------------------------------------------------------------------------------ the runner side

def hand_over(script: str) -> None:
    """Run this runner in a child of the warm server and exit with its code; return (and start
    cold) when there is no server or it refuses. Call before the heavy imports."""
    if IN_CHILD or os.environ.get(SOCKET_ENV) == "off":
        return
    path = socket_path()
    if not os.path.exists(path):
        return
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        send(conn, {"script": os.path.abspath(script), "argv": sys.argv[1:], "cwd": os.getcwd(),
                    "env": dict(os.environ), "python": sys.executable, "flags": list(sys.flags)},
             fds=(0, 1, 2))
        reply, _ = recv(conn)
    except (OSError, EOFError, ValueError) as e:   # a stale socket file, a server that just left
        print(f"[warm] no runner server at {path} ({e}); starting cold", file=sys.stderr)
        conn.close()
        return
    if not reply.get("ok"):
        print(f"[warm] the runner server refused: {reply.get('why')}; starting cold",
              file=sys.stderr)
        conn.close()
        return
    child = reply["pid"]
    print(f"[warm] running in a child (pid {child}) of the runner server (pid {reply['server']}): "
          "imports already done", file=sys.stderr, flush=True)

    def forward(sig, _frame):   # Ctrl-C, the guard's SIGTERM: the child gets them too
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        done, _ = recv(conn)
        code = int(done["exit"])
    except (OSError, EOFError, ValueError, KeyError) as e:
        print(f"[warm] lost the runner server ({e})", file=sys.stderr)
        code = 1
    os._exit(code)   # nothing of ours to flush: the child wrote to our stdout/stderr itself


# ------------------------------------------------------------------------------ the server side

def refusal(req: dict, stamp: dict) -> str | None:
    """Why a request must start cold, or None."""
    script = req.get("script", "")
    if os.path.dirname(script) != SCRIPTS or os.path.basename(script) not in RUNNERS:
        return f"{script} is not one of this checkout's runners"
    if req.get("python") != sys.executable:
        return f"another Python ({req.get('python')}, server {sys.executable})"
    if req.get("flags") != list(sys.flags):
        return "other interpreter flags (python -u, -O, -X ...) than the server's"
    ours, theirs = import_time_env(START_ENV), import_time_env(req.get("env", {}))
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        return "environment differs from the server's in " + ", ".join(differ)
    if sources_stamp() != stamp:
        return "sources changed since the server started (it exits now)"
    return None


def run_child(conn: socket.socket, req: dict, fds: list, added_env: dict) -> None:
    """In the forked child: become the runner process and never return."""
    global IN_CHILD
    IN_CHILD = True
    code = 1
    try:
        for target, fd in zip((0, 1, 2), fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ.update(added_env)
        fresh_stdio()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        watch_runner(conn)
        sys.argv = [req["script"], *req["argv"]]
        import runpy
        try:
            runpy.run_path(req["script"], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except KeyboardInterrupt:
            code = 130
    except BaseException:   # a crash prints its traceback to the runner's stderr, as cold
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def fresh_stdio() -> None:
    """sys.stdin/stdout/stderr as a cold interpreter makes them over the runner's fds 0, 1, 2 (the
    server's wrap its log file: seekable, block-buffered, a pipe's reconfigure would fail)."""
    import io
    enc = sys.stdout.encoding   # from the locale, the same as the runner's (LANG/LC_ compared)

    def text(fd, mode, **kw):
        raw = io.FileIO(fd, mode, closefd=False)
        buf = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        return io.TextIOWrapper(buf, encoding=enc, **kw)
    sys.stdin = sys.__stdin__ = text(0, "r")
    sys.stdout = sys.__stdout__ = text(1, "w", line_buffering=os.isatty(1),
                                       write_through=bool(os.environ.get("PYTHONUNBUFFERED")))
    sys.stderr = sys.__stderr__ = text(2, "w", errors="backslashreplace", line_buffering=True)


def watch_runner(conn: socket.socket) -> None:
    """The runner process only waits; if it dies (killed by the guard, the terminal closed), its
    end of the socket closes and this child must not outlive it."""
    import threading

    def watch():
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, daemon=True).start()


def serve(path: str, idle_exit: float, log=print, owner: int | None = None) -> int:
    """Accept runner launches until idle for idle_exit seconds, a stop request, stale sources, or
    (owner given) the owner process gone with no runner left: a make recipe that starts a server
    for its own validation passes its shell's pid, so the server ends with the recipe.
    The imports are the caller's (scripts/runner_server.py preloads them before calling)."""
    import select
    import time
    import torch
    if torch.cuda.is_initialized():   # a forked child cannot use a CUDA context made here
        raise RuntimeError("CUDA was initialized before serving; children could not use it")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)
    stamp, added_env = sources_stamp(), set_by_imports()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    os.chmod(path, 0o600)
    srv.listen(16)
    children: dict[int, tuple] = {}   # child pid -> (the runner's connection, adoption record)
    last = time.monotonic()
    owner_start = start_time(owner) if owner else None
    if owner and owner_start is None:
        log(f"[runner server] owner pid {owner} is not running: exiting")
        return 0
    log(f"[runner server] pid {os.getpid()} ready on {path}; exits after {idle_exit:g} s idle")
    try:
        while True:
            for pid, (conn, record) in list(children.items()):   # report finished children's codes
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    if record and os.path.exists(record):
                        os.unlink(record)
                    code = os.waitstatus_to_exitcode(status)
                    reply(conn, {"exit": code if code >= 0 else 128 - code})
                    conn.close()
                    del children[pid]
                    last = time.monotonic()
            if not children and time.monotonic() - last > idle_exit:
                log(f"[runner server] idle for {idle_exit:g} s: exiting")
                return 0
            if owner and not children and start_time(owner) != owner_start:
                log(f"[runner server] owner pid {owner} ended: exiting")
                return 0
            if not select.select([srv], [], [], 0.05)[0]:
                continue
            conn, _ = srv.accept()
            conn.settimeout(10)   # a client that connects and says nothing must not stall us
            try:
                req, fds = recv(conn, nfds=3)
            except (OSError, EOFError, ValueError):
                conn.close()
                continue
            conn.settimeout(None)
            last = time.monotonic()
            if req.get("stop") or req.get("status"):
                for fd in fds:   # only a launch keeps the runner's descriptors
                    os.close(fd)
            if req.get("stop"):
                reply(conn, {"ok": True, "server": os.getpid()})
                conn.close()
                log("[runner server] stop requested: exiting")
                return 0
            if req.get("status"):
                reply(conn, {"ok": True, "server": os.getpid(), "children": len(children)})
                conn.close()
                continue
            why = refusal(req, stamp)
            if why:
                reply(conn, {"ok": False, "why": why})
                conn.close()
                for fd in fds:
                    os.close(fd)
                if why.startswith("sources changed"):
                    log(f"[runner server] {why}")
                    return 0
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                srv.close()
                for other, _ in children.values():
                    other.close()
                run_child(conn, req, fds, added_env)
            for fd in fds:
                os.close(fd)
            try:   # the record before the runner hears of the child: the guard sees it at once
                runner_pid = struct.unpack("3i", conn.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
                record = adopt(runner_pid, pid)
            except OSError as e:
                log(f"[runner server] child {pid}: no adoption record ({e})")
                record = None
            reply(conn, {"ok": True, "pid": pid, "server": os.getpid()})
            children[pid] = (conn, record)
            log(f"[runner server] child {pid}: {os.path.basename(req['script'])} "
                f"{' '.join(req['argv'])}")
    finally:
        srv.close()
        if os.path.exists(path):
            os.unlink(path)


def reply(conn: socket.socket, msg: dict) -> None:
    """The server's answers: a runner that went away meanwhile is no reason to stop serving."""
    try:
        send(conn, msg)
    except OSError:
        pass


def request(msg: dict, path: str | None = None) -> dict | None:
    """A stop/status request to the server at path; None when none answers."""
    path = path or socket_path()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        send(conn, msg)
        return recv(conn)[0]
    except (OSError, EOFError, ValueError):
        return None
    finally:
        conn.close()
