"""What the command-line runners share as processes: stdio, one-line errors, device choice, the
per-answer watchdog, stdin turns, loading a `.dat` (with every input problem as one `error:`
line), the logits check, and the entry point.

Their flags are in runner_flags.py, one timed answer in runner_generate.py, the conversation in
runner_session.py. The runners (run_training2.py, run_training_fp2.py, interactive_chat.py) mirror the
original F# scripts.
"""
import os
import sys
import threading
import time
from contextlib import contextmanager

import torch

from .chat import load_tokenizer
from .dat import DatFormatError, read_dat
from .paths import default_model_dir, default_weight, resolve_weight
from .runner_flags import Args


def run_main(main) -> None:
    """A runner's `__main__`: exit with main(argv)'s code; Ctrl-C exits 130, no traceback."""
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)


def setup_stdio() -> None:
    # UTF-8 whatever the locale (the answers are Chinese); line-buffered so that a guard or a
    # pipe reading us sees each answer when it is printed.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(encoding="utf-8", errors="replace", line_buffering=True)


def die(msg: str, code: int = 1):
    """One line on stderr and exit: for errors the user can fix, a traceback would only hide it."""
    print("error: " + " ".join(str(msg).split("\n")), file=sys.stderr)
    sys.exit(code)


def device_and_dtype(args: Args) -> tuple[str, str]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        die(f"--device {device}: no CUDA device is visible (use --device cpu)")
    dtype = args.dtype
    if device == "cpu" and dtype != "float32" and "dtype" not in args.given:
        print(f"notice: running on CPU in float32 (CPU {dtype} is slow); pass --dtype to force")
        dtype = "float32"
    return device, dtype


@contextmanager
def watchdog(timeout_ms: int, what: str):
    """Exit the whole process (124) when the block runs past timeout_ms; 0 = no watchdog.

    A stuck CUDA call cannot be interrupted from Python; like the original (which killed itself
    to avoid a GB10 lock-up), the only safe way out is leaving the process.
    """
    if not timeout_ms or timeout_ms <= 0:
        yield
        return

    def fire():
        print(f"[fatal] {what}: timeout exceeded ({timeout_ms} ms); exiting", flush=True)
        os._exit(124)

    timer = threading.Timer(timeout_ms / 1000, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def empty_device_cache() -> None:
    """Give cached GPU memory back after a turn (run_training2's --empty-cache-each-turn)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def user_lines(require_tty: bool, banner: str = "進入互動模式（Ctrl+D 結束）"):
    """Non-blank user lines from stdin until EOF.

    require_tty: the runners' --ifInteractive only talks to a person; with a pipe or /dev/null on
    stdin it says so and yields nothing, instead of waiting or failing.
    """
    tty = sys.stdin.isatty()
    if require_tty and not tty:
        print("notice: --ifInteractive true but stdin is not a terminal: no interactive turns")
        return
    if tty:
        print(banner)
    while True:
        try:
            line = input("請輸入: " if tty else "")
        except EOFError:
            if tty:
                print()   # end the prompt's line
            return
        if line.strip():
            yield line.strip()


def load_for_runner(weight: str | None, model_dir: str | None, device: str, dtype: str,
                    training_path: bool):
    """(model, tokenizer, load seconds); any problem with the inputs ends in one `error:` line.

    training_path: give every weight a zero delta (model.make_trainable), so the forward is the
    trainer's: fake-quantized NVFP4 weight = base + delta with STE. With zero deltas it computes
    the same function as the inference path; it is what `train` optimizes.
    """
    model_dir = model_dir or default_model_dir()
    weight = weight or default_weight(model_dir)
    path = resolve_weight(weight, model_dir)
    if not os.path.isfile(path):
        where = "" if os.path.isabs(weight) else f" (looked in . and in {model_dir})"
        die(f"weight file not found: {weight}{where}")
    config = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config):
        die(f"{config}: no such file (--model-dir must hold the model's config.json)")
    t0 = time.perf_counter()
    try:
        dat = read_dat(path)
    except (DatFormatError, FileNotFoundError) as e:
        die(e)   # the message names the file, the entry and the byte offset
    try:
        tok = load_tokenizer(model_dir)
    except (OSError, ValueError) as e:
        die(f"{model_dir}: cannot load the tokenizer: {e}")
    try:
        # Imported here: transformers and the compiled extension load only once the inputs exist.
        from .model import DTYPES, ModelLoadError, load_model, make_trainable
    except ImportError as e:
        die(f"cannot import the model code ({e}); run `make build`")
    try:
        model = load_model(dat, model_dir, device, DTYPES[dtype])
    except ModelLoadError as e:
        die(e)
    except (OSError, ValueError, KeyError) as e:
        die(f"{config}: cannot build the model: {e}")
    if training_path:
        make_trainable(model)
    print(f"weight: {path}  model-dir: {model_dir}  device: {device}  dtype: {dtype}  "
          f"path: {'training (fake-quant + STE, zero deltas)' if training_path else 'inference'}")
    return model, tok, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# the logits check

def prompt_logits(model, ids: list[int]) -> torch.Tensor:
    """Logits at every position of one prompt, [T, vocab]."""
    dev = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device=dev), use_cache=False).logits[0]


def fail_on_nan_inf(logits: list[torch.Tensor]) -> None:
    """--check-logits: any NaN or Inf ends the run with exit 1."""
    nan = any(bool(torch.isnan(t).any()) for t in logits)
    inf = any(bool(torch.isinf(t).any()) for t in logits)
    if nan or inf:
        die(f"logits invalid: nan={str(nan).lower()} inf={str(inf).lower()}")
    print("[info] logits ok: nan=false inf=false")
