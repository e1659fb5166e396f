"""Keep the runners' imports warm: runners started while this server is up skip ~11 s of imports.

    python scripts/runner_server.py --detach       # make runner-server: start, wait until ready
    python scripts/runner_server.py --status
    python scripts/runner_server.py --stop         # make runner-server-stop

The server imports torch, transformers' Qwen3/Llama and this package once, never touches CUDA,
and forks a child per runner launch (nvfp4lab/warm.py says how and when a runner starts cold
instead). It exits after --idle-exit seconds without a launch, on --stop, or at the first launch
after a source file of scripts/ changed. Exit: 0; 1 when --detach's server did not come up, or
--status found none (--stop with none up is 0).
"""
import argparse
import importlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import warm  # noqa: E402

# What a runner imports before its first token (tests/test_warm_runner.py checks that a runner
# forked after these imports no transformers module); names missing from the installed
# transformers are skipped.
PRELOAD = (
    "torch", "transformers",
    "transformers.models.qwen3.modeling_qwen3", "transformers.models.llama.modeling_llama",
    "transformers.models.qwen2.tokenization_qwen2", "transformers.tokenization_utils_fast",
    "transformers.tokenization_utils_tokenizers", "transformers.generation.utils",
    "nvfp4lab.runner", "nvfp4lab.runner_flags", "nvfp4lab.runner_generate",
    "nvfp4lab.runner_session", "nvfp4lab.chat", "nvfp4lab.model", "nvfp4lab.decode",
    "nvfp4lab.fuse", "nvfp4lab.ops",
)
# tokenizer_class of the Qwen3 tokenizer_config.json (the user's, the proxy's) and of SmolLM2's
TOKENIZER_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast", "TokenizersBackend",
                     "PreTrainedTokenizerFast")


def preload() -> list[str]:
    """Import PRELOAD (and the classes transformers' lazy module resolves on first use); returns
    the names skipped."""
    skipped = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            skipped.append(name)
    import transformers
    for cls in ("Qwen3ForCausalLM", "LlamaForCausalLM", "StaticCache", "DynamicCache",
                "AutoTokenizer", "AutoConfig", "AutoModelForCausalLM"):
        getattr(transformers, cls)
    # AutoTokenizer imports the class a tokenizer_config.json names on first use (Qwen's
    # "Qwen2Tokenizer" pulls in modules of its own); resolve the ones our models name, no files read
    from transformers.models.auto import tokenization_auto
    for name in TOKENIZER_CLASSES:
        try:
            tokenization_auto.tokenizer_class_from_name(name)
        except (ImportError, AttributeError, ValueError):
            skipped.append(name)
    return skipped


def detach(args) -> int:
    """Start the server in its own session, wait until its socket answers."""
    path = warm.socket_path()
    if warm.request({"status": True}, path):
        print(f"runner server already up on {path}")
        return 0
    log = open(args.log, "a")
    cmd = [sys.executable, os.path.abspath(__file__), "--idle-exit", str(args.idle_exit)]
    if args.owner:
        cmd += ["--owner", str(args.owner)]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < args.wait:
        if p.poll() is not None:
            print(f"error: the runner server exited with code {p.returncode} (see {args.log})",
                  file=sys.stderr)
            return 1
        if warm.request({"status": True}, path):
            print(f"runner server pid {p.pid} ready on {path} in {time.monotonic() - t0:.1f} s "
                  f"(log {args.log}; exits after {args.idle_exit:g} s idle)")
            return 0
        time.sleep(0.1)
    p.terminate()
    print(f"error: the runner server was not ready after {args.wait:g} s (see {args.log})",
          file=sys.stderr)
    return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--idle-exit", type=float, default=1800.0,
                   help="exit after this many seconds without a runner launch (default 1800)")
    p.add_argument("--detach", action="store_true",
                   help="start in the background and return once it answers")
    p.add_argument("--log", default=os.path.join("artifacts", "runner-server.log"),
                   help="the detached server's output (default artifacts/runner-server.log)")
    p.add_argument("--wait", type=float, default=120.0, help="--detach: how long to wait")
    p.add_argument("--owner", type=int, default=None,
                   help="also exit once this pid has ended and no runner is left (make stageG/"
                        "demo/demo-real pass their recipe shell's pid: the server they start for "
                        "their validation ends with them)")
    p.add_argument("--stop", action="store_true", help="stop the running server")
    p.add_argument("--status", action="store_true", help="say whether a server is up")
    args = p.parse_args()
    if args.idle_exit <= 0:
        p.error("--idle-exit must be > 0")
    if args.stop or args.status:
        reply = warm.request({"stop": True} if args.stop else {"status": True})
        if reply is None:   # stopping what is not running is not an error; a status is
            print(f"no runner server on {warm.socket_path()}")
            return 0 if args.stop else 1
        print(f"runner server pid {reply['server']} on {warm.socket_path()}: "
              + ("stopped" if args.stop else f"{reply['children']} runner(s) running"))
        return 0
    if args.detach:
        os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)
        return detach(args)
    t0 = time.monotonic()
    skipped = preload()
    print(f"[runner server] imports done in {time.monotonic() - t0:.1f} s"
          + (f" (not in this transformers: {', '.join(skipped)})" if skipped else ""), flush=True)
    return warm.serve(warm.socket_path(), args.idle_exit,
                      log=lambda m: print(m, flush=True), owner=args.owner)


if __name__ == "__main__":
    sys.exit(main())
