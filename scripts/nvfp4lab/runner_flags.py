"""The runners' flags: one table of the flags they share, and the original's command-line forms.

The runners (run_training2.py, run_training_fp2.py, interactive_chat.py) mirror the original F# scripts, so
their flags keep the original spellings (`--KVCacheOut`, `--ifInteractive`) and forms:
`--flag value`, `--flag=value`, booleans `true|false` (also 1/0, yes/no), a bare boolean flag
means true. Names are matched case-insensitively, as the original's lower-case aliases did.
Hand-rolled rather than argparse: argparse has none of these forms.
"""
import sys
from dataclasses import dataclass

# Same names as model.DTYPES; spelled out so flags parse without importing the model stack.
DTYPE_NAMES = ("float16", "bfloat16", "float32")


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
    Flag("compile-step", False, "greedy decode with a cache: the one-token step goes through "
                                "torch.compile before its CUDA graph is captured (4B shape on an "
                                "H200: 200 tok/s instead of 147, for a ~53 s compile at the first "
                                "answer; doc/BENCHMARKS.md)"),
    Flag("fused-gemv", False, "greedy decode with a cache: q/k/v and gate/up read by one GEMV "
                              "each (stacked packed rows, nvfp4lab/fuse.py): 4 GEMVs a layer "
                              "instead of 7, the same answers; the exported (no-delta) form only"),
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
