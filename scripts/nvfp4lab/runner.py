"""What the command-line runners share: flags, loading, one generation turn, chat-session logs.

The runners (run_training2.py, run_training_fp2.py, chat.py) mirror the original F# scripts, so
their flags keep the original spellings (`--KVCacheOut`, `--ifInteractive`) and forms:
`--flag value`, `--flag=value`, booleans `true|false` (also 1/0, yes/no), a bare boolean flag
means true. Names are matched case-insensitively, as the original's lower-case aliases did.
"""
import datetime
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .chat import encode_prompt, load_tokenizer, stop_token_ids
from .dat import DatFormatError, read_dat
from .decode import StaticDecoder
from .paths import default_model_dir, default_weight, resolve_weight

# Same names as model.DTYPES; spelled out so flags parse without importing the model stack.
DTYPE_NAMES = ("float16", "bfloat16", "float32")


# ---------------------------------------------------------------------------------------------
# flags

@dataclass
class Flag:
    name: str            # as the original spells it, without the dashes
    default: object      # its type is the flag's type; None means a string that may be absent
    help: str
    choices: tuple = ()
    aliases: tuple = ()

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")

    def show_default(self) -> str:
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return "-" if self.default is None else str(self.default)


# Flags more than one runner has; each runner picks the ones it takes and may change defaults.
COMMON = [
    Flag("model-dir", None, "model dir with config.json (default: /models/qwen3-4b-instruct-2507-"
                            "torchsharp if it exists, else the built-in proxy artifacts/proxy)"),
    Flag("weight", None, ".dat weights; a relative path is looked up from the current dir, then "
                         "in --model-dir (default: the base Qwen3-4B-Instruct-2507-nvfp4.dat)"),
    Flag("device", None, "cuda | cpu | cuda:N (default: cuda when available, else cpu)"),
    Flag("dtype", "float16", "compute dtype; on CPU the default becomes float32 (CPU half "
                             "precision is slow) unless --dtype is given", DTYPE_NAMES),
    Flag("quant", "fp4", "weight format; only NVFP4 .dat files (fp4) are supported", ("fp4",)),
    Flag("prompt", "Write one short sentence about UFO and you.", "first user message"),
    Flag("max-tokens", 20, "max new tokens per answer"),
    Flag("temp", 0.0, "sampling temperature; 0 = greedy"),
    Flag("top-p", 1.0, "nucleus sampling mass (with --temp > 0)", aliases=("topp",)),
    Flag("seed", 123, "sampling seed, set before every answer (with --temp > 0)"),
    Flag("check-logits", False, "check logits for NaN/Inf (exit 1 on any)"),
    Flag("timing", False, "print [time] lines: load, prompt tokens, generate, prefill, decode"),
    Flag("ignore-eos", False, "do not stop at <|im_end|>/<|endoftext|>: always max-tokens"),
    Flag("ifInteractive", False, "then read more user lines from stdin, only when it is a "
                                 "terminal (otherwise a notice, no wait); Ctrl-D ends"),
    Flag("timeout-ms", 60000, "per-answer watchdog: past it the process prints [fatal] and "
                              "exits 124 (a hung GPU call cannot be interrupted); 0 = off"),
    Flag("chat-session-out", None, "append every turn to this text file",
         aliases=("tee-object-chat-session",)),
    Flag("chat-session-jsonl", None, "append every turn to this JSONL file",
         aliases=("tee-object-chat-session-json",)),
]


def common_flags(*names: str, **defaults) -> list[Flag]:
    """The COMMON flags called `names`, with per-runner defaults given by attribute name."""
    by_name = {f.name: f for f in COMMON}
    out = []
    for n in names:
        f = by_name[n]
        if f.attr in defaults:
            f = Flag(f.name, defaults.pop(f.attr), f.help, f.choices, f.aliases)
        out.append(f)
    assert not defaults, f"defaults for flags not picked: {sorted(defaults)}"
    return out


class Args:
    """Flag values as attributes (`--max-tokens` -> .max_tokens); `given`: the ones the user set."""

    def __init__(self, values: dict, given: set):
        self.__dict__.update(values)
        self.given = given


def usage_error(prog: str, msg: str):
    print(f"usage: {prog} [--flag value | --flag=value ...] (--help lists them): {msg}",
          file=sys.stderr)
    sys.exit(2)


def print_help(prog: str, flags: list[Flag]) -> None:
    print(f"usage: {prog} [--flag value | --flag=value ...]")
    for f in flags:
        kind = "|".join(f.choices) or ("true|false" if isinstance(f.default, bool) else "VALUE")
        alias = "".join(f" (alias --{a})" for a in f.aliases)
        print(f"  --{f.name} {kind}  [{f.show_default()}]  {f.help}{alias}")


def convert(prog: str, f: Flag, value: str):
    if f.choices:
        if value.lower() not in f.choices:
            usage_error(prog, f"--{f.name} must be one of {'|'.join(f.choices)}, got {value!r}")
        return value.lower()
    if isinstance(f.default, bool):
        v = value.strip().lower()
        if v in ("true", "1", "yes"):
            return True
        if v in ("false", "0", "no"):
            return False
        usage_error(prog, f"--{f.name} expects true|false, got {value!r}")
    for kind in (int, float):
        if isinstance(f.default, kind):
            try:
                return kind(value)
            except ValueError:
                usage_error(prog, f"--{f.name} expects {kind.__name__}, got {value!r}")
    return value


def parse_flags(argv: list[str], flags: list[Flag], prog: str) -> Args:
    by_name = {n.lower(): f for f in flags for n in (f.name, *f.aliases)}
    values = {f.attr: f.default for f in flags}
    given = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print_help(prog, flags)
            sys.exit(0)
        if not arg.startswith("--"):
            usage_error(prog, f"unexpected argument {arg!r}")
        name, eq, value = arg[2:].partition("=")
        f = by_name.get(name.lower())
        if f is None:
            usage_error(prog, f"unknown flag --{name}")
        if not eq:
            # As the original: the next word is the value unless it is itself a flag; a lone
            # boolean flag means true. (A value starting with "--" needs --flag=value.)
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            elif isinstance(f.default, bool):
                value = "true"
            else:
                usage_error(prog, f"--{f.name} needs a value")
        values[f.attr] = convert(prog, f, value)
        given.add(f.attr)
        i += 1
    return Args(values, given)


# ---------------------------------------------------------------------------------------------
# process plumbing

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


# ---------------------------------------------------------------------------------------------
# model

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


@dataclass
class Generation:
    ids: list              # new tokens, cut before the first stop token (unless ignore_eos)
    logits: torch.Tensor   # [steps, vocab] float32 raw logits when asked for, else None
    total_s: float
    prefill_s: float       # prompt forward + first token
    decode_s: list         # one entry per later token


class _StepClock:
    """A transformers streamer that only timestamps: put() gets the prompt once, then each token."""

    def __init__(self):
        self.prompt_seen = False
        self.stamps = []

    def put(self, value):
        if self.prompt_seen:
            self.stamps.append(time.perf_counter())
        self.prompt_seen = True

    def end(self):
        pass


def prefill_token_by_token(model, ids: list[int], cache):
    """Feed ids one at a time into the KV cache (the original's `tbt` prefill mode).

    Through the decoder alone: these positions need no logits, and the lm_head is the largest
    matmul of a decode step (vocab 151936).
    """
    cache = cache if cache is not None else DynamicCache(config=model.config)
    dev = next(model.parameters()).device
    decoder = model.get_decoder()
    with torch.no_grad():
        for t in ids[cache.get_seq_length():]:
            decoder(input_ids=torch.tensor([[t]], device=dev), past_key_values=cache,
                    use_cache=True)
    return cache


def generate(model, tok, context_ids: list[int], max_new_tokens: int, *, use_cache=True,
             cache=None, token_by_token=False, temp=0.0, top_p=1.0, seed=123, ignore_eos=False,
             output_logits=False, decoder: StaticDecoder | None = None,
             reuse_prefix=False) -> Generation:
    """One answer, timed per step.

    Greedy with a KV cache and a `decoder` given: the static-cache decoder (decode.py; a CUDA
    graph per step on the GPU); reuse_prefix keeps the part of its cache that `context_ids`
    starts with. Everything else (sampling, logits output, token-by-token prefill, no cache)
    goes through transformers' `generate`:
    cache: a transformers Cache holding a prefix of context_ids (kept across turns by the
    caller); generate then only runs the uncached tail. use_cache=False: no cache at all, every
    step re-runs the whole sequence (the original's full replay).
    """
    dev = next(model.parameters()).device
    stops = stop_token_ids(tok)
    t0 = time.perf_counter()
    if decoder is not None and use_cache and not token_by_token and temp <= 0 and not output_logits:
        new, stamps = decoder.greedy(context_ids, max_new_tokens, [] if ignore_eos else stops,
                                     reuse_prefix)
        end = time.perf_counter()
        if not ignore_eos:
            new = next((new[:i] for i, t in enumerate(new) if t in stops), new)
        stamps = stamps or [end]
        return Generation(new, None, end - t0, stamps[0] - t0,
                          [b - a for a, b in zip(stamps, stamps[1:])])
    clock = _StepClock()
    if use_cache and token_by_token and len(context_ids) > 1:
        cache = prefill_token_by_token(model, context_ids[:-1], cache)
    ids = torch.tensor([context_ids], device=dev)
    kw = dict(max_new_tokens=max_new_tokens, use_cache=use_cache, streamer=clock,
              eos_token_id=None if ignore_eos else stops,
              pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else stops[0],
              return_dict_in_generate=True, output_logits=output_logits)
    if use_cache and cache is not None:
        kw["past_key_values"] = cache
    if temp > 0:
        torch.manual_seed(seed)
        kw.update(do_sample=True, temperature=temp, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    end = time.perf_counter()
    new = out.sequences[0, ids.shape[1]:].tolist()
    if not ignore_eos:
        new = next((new[:i] for i, t in enumerate(new) if t in stops), new)
    logits = torch.cat(out.logits).float() if output_logits else None
    stamps = clock.stamps or [end]
    return Generation(new, logits, end - t0, stamps[0] - t0,
                      [b - a for a, b in zip(stamps, stamps[1:])])


def print_timing(gen: Generation, prompt_tokens: int) -> None:
    print(f"[time] promptTokens={prompt_tokens}")
    print(f"[time] generate: {gen.total_s * 1e3:.1f} ms")
    print(f"[time] prefill: {gen.prefill_s * 1e3:.1f} ms")
    if gen.decode_s:
        per = sum(gen.decode_s) / len(gen.decode_s)
        print(f"[time] decode: {per * 1e3:.1f} ms/token, {1 / per if per > 0 else 0:.1f} tok/s")
    else:
        print("[time] decode: - (one token or none)")


def print_answer(tag: str | None, text: str, gen: Generation) -> None:
    """`out: ...` for an untagged turn (plus its token count), `[tag]out: ...` for the others."""
    if tag is None:
        print(f"out: {text}")
        print(f"out tokens count: {len(gen.ids)}")
    else:
        print(f"[{tag}]out: {text}")
    if os.environ.get("QWEN3_FS_DEBUG_TOKENS") == "1":   # the original's debug switch
        print(f"[debug] generated token ids: {gen.ids}")


class Conversation:
    """A chat that keeps its history; each turn renders it with the chat template.

    persistent_kv: keep one KV cache and the token ids of the whole conversation across turns
    and feed only the new turn (the original fp2 runner's `--use-kvc`): history is then the
    exact generated tokens, not their re-tokenized text.
    """

    def __init__(self, model, tok, args, use_cache=True, token_by_token=False,
                 persistent_kv=False, empty_cache=False):
        self.model, self.tok, self.args = model, tok, args
        self.use_cache, self.token_by_token = use_cache, token_by_token
        self.persistent_kv, self.empty_cache = persistent_kv, empty_cache
        self.log = ChatLog(getattr(args, "chat_session_out", None),
                           getattr(args, "chat_session_jsonl", None))
        self.close_ids = tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
        # Greedy turns with a cache: the static-cache decoder (a CUDA graph per step on the GPU).
        greedy = use_cache and not token_by_token and args.temp <= 0
        self.decoder = StaticDecoder(model) if greedy else None
        self.reset()

    def reset(self) -> None:
        self.history = []   # (role, text)
        self.context = []   # persistent_kv: every token so far
        self.cache = DynamicCache(config=self.model.config) if self.persistent_kv else None
        if self.decoder is not None:
            self.decoder.tokens = []   # a new conversation: nothing in the cache to reuse

    def cached_length(self) -> int:
        """Tokens held in the conversation's KV cache (persistent_kv)."""
        if self.decoder is not None:
            return self.decoder.cached_length()
        return self.cache.get_seq_length() if self.cache is not None else 0

    def ask(self, message: str, timeout_ms: int = 0, what: str = "turn"):
        """One answer -> (text, Generation, number of prompt tokens fed this turn)."""
        a = self.args
        if self.persistent_kv:
            turn_ids = encode_prompt(self.tok, [], message)
            ids = self.context + turn_ids
        else:
            ids = turn_ids = encode_prompt(self.tok, self.history, message)
        with watchdog(timeout_ms, what):
            gen = generate(self.model, self.tok, ids, a.max_tokens, use_cache=self.use_cache,
                           cache=self.cache, token_by_token=self.token_by_token, temp=a.temp,
                           top_p=a.top_p, seed=a.seed, ignore_eos=a.ignore_eos,
                           decoder=self.decoder, reuse_prefix=self.persistent_kv)
        text = self.tok.decode(gen.ids, skip_special_tokens=True)
        if self.persistent_kv:
            # The cache now holds a prefix of this; the next turn runs only the rest.
            self.context = ids + gen.ids + self.close_ids
        self.history += [("user", message), ("assistant", text)]
        self.log.append(message, text)
        if self.empty_cache:
            empty_device_cache()
        return text, gen, len(turn_ids)

    def turn(self, tag: str | None, message: str, timeout_ms: int = 0) -> str:
        """ask() plus the runners' printing: [time] lines (with --timing) and the out line."""
        text, gen, n = self.ask(message, timeout_ms, f"turn [{tag}]" if tag else "turn")
        if self.args.timing:
            print_timing(gen, n)
        print_answer(tag, text, gen)
        return text


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


def empty_device_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


class ChatLog:
    """The original's chat-session tee files: a text block and/or a JSONL line per turn."""

    def __init__(self, text_path: str | None, jsonl_path: str | None):
        self.text_path, self.jsonl_path = text_path, jsonl_path

    def append(self, user: str, output: str) -> None:
        ts = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        for path in (self.text_path, self.jsonl_path):
            if path and os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        if self.text_path:
            with open(self.text_path, "a", encoding="utf-8") as f:
                f.write(f"==== {ts} ====\n[user] {user}\n[assistant] {output}\n\n")
        if self.jsonl_path:
            entry = {"ts": ts, "messages": [{"role": "user", "text": user}], "output": output}
            with open(self.jsonl_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
