"""How close to a tie each token of a model's greedy answer is (the margin --keep-margin-weight holds).

    python scripts/greedy_margins.py --weight artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat \
        --model-dir artifacts/smollm2 --suite data/suite-en-dev-v3.tsv --lines 352,365,368

For each prompt (suite rows by line, or --prompt): the model's greedy answer, then per answer
token the margin m = log p(that token) - log p(the runner-up) and the runner-up, teacher-forced
on the tokens generated (one forward of prompt + answer: the decoder's margins up to the float
noise between its KV cache and a full forward). A token whose margin is a few hundredths of a
nat is where a small edit flips the greedy answer (doc/METHOD.md "Prepared for round 32": the
dev facts every trained edit loses).
Prints one line per prompt ("token (margin, runner-up)"); --json prints the list instead.
Exit 0, or 1 with one line naming the file (bad .dat, suite line not in the suite).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from nvfp4lab import chat, generate, paths, trainer  # noqa: E402
from nvfp4lab.dat import DatFormatError, read_dat  # noqa: E402
from nvfp4lab.model import DTYPES, ModelLoadError, load_model  # noqa: E402
from nvfp4lab.suite import read_suite  # noqa: E402
from nvfp4lab.tsv import DataError  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--weight", required=True, help=".dat whose greedy answers are measured")
    a("--model-dir", help="config.json (+ tokenizer); default: the user's dir, else the proxy")
    a("--suite", help="suite file the --lines are taken from")
    a("--lines", default="", help="comma-separated line numbers of --suite (its prompts, no context)")
    a("--prompt", action="append", default=[], help="a prompt (repeatable)")
    a("--max-new-tokens", type=int, default=32, help="answer length (the suites' judging length)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--compute-dtype", choices=list(DTYPES), help="default bfloat16 (float32 on CPU)")
    a("--json", action="store_true", help="the margins as JSON")
    args = p.parse_args(argv)
    if not args.prompt and not (args.suite and args.lines):
        p.error("give --prompt, or --suite with --lines")
    args.model_dir = args.model_dir or paths.default_model_dir()
    args.compute_dtype = args.compute_dtype or ("float32" if args.device == "cpu" else "bfloat16")
    return args


def suite_prompts(path: str, lines: str) -> list[str]:
    """The prompts of a suite's rows by file line, in the order given."""
    by_line = {r.line: r.prompt for r in read_suite(path)}
    wanted = [int(x) for x in lines.split(",") if x.strip()]
    missing = [n for n in wanted if n not in by_line]
    if missing:
        raise DataError(f"{path}:{missing[0]}: no suite row on that line")
    return [by_line[n] for n in wanted]


@torch.no_grad()
def greedy_margins(model, tok, prompts: list[str], max_new_tokens: int) -> list[dict]:
    """[{prompt, answer, tokens: [{token, margin, second}]}]: each prompt's greedy answer and,
    teacher-forced on the very tokens generated, each one's lead over the runner-up (the end
    token too, when the answer ended before max_new_tokens)."""
    chats = [[{"role": "user", "content": p}] for p in prompts]
    stop = chat.stop_token_ids(tok)[0]
    device = generate.model_device(model)
    out = []
    for c, ids in zip(chats, generate.greedy_chat_ids(model, tok, chats, max_new_tokens)):
        answer = ids + ([stop] if len(ids) < max_new_tokens else [])
        prompt_ids = chat.encode_chat(tok, c)
        x = torch.tensor([prompt_ids + answer], device=device)
        logp = torch.log_softmax(model(input_ids=x).logits[0, len(prompt_ids) - 1:-1].float(), -1)
        lead, other = trainer.lead_over_runner_up(logp, torch.tensor(answer, device=device))
        tokens = [{"token": tok.decode([own]), "margin": round(float(m), 4), "second": tok.decode([int(o)])}
                  for own, m, o in zip(answer, lead, other)]
        out.append({"prompt": c[0]["content"], "answer": tok.decode(ids, skip_special_tokens=True),
                    "tokens": tokens})
    return out


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        prompts = args.prompt + (suite_prompts(args.suite, args.lines) if args.lines else [])
        model = load_model(read_dat(args.weight), args.model_dir, torch.device(args.device),
                           DTYPES[args.compute_dtype])
        tok = chat.load_tokenizer(args.model_dir)
    except (DataError, DatFormatError, ModelLoadError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model.eval()
    found = greedy_margins(model, tok, prompts, args.max_new_tokens)
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=1))
        return 0
    for f in found:
        print(f"{f['prompt']}\n  " + " ".join(f"{t['token']!r}({t['margin']:.2f}, {t['second']!r})"
                                             for t in f["tokens"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
