"""Greedy answers of a `.dat` to a seeded sample of TRAINING prompts only (identity rows, near
misses + greetings, anchors), counted against the target: the CPU rehearsal of a new method
before any suite row is read (doc/METHOD.md "Round 38"). No suite of any split is opened.

    python scripts/train_prompt_check.py --weight W.dat --model-dir artifacts/smollm2 --rows 24
"""
import argparse
import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nvfp4lab import chat, generate  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.model import load_model  # noqa: E402
from nvfp4lab.tsv import read_tsv  # noqa: E402

GROUPS = {
    "identity": ("data/real-whoami-en-v2.tsv",),
    "near-miss/greeting": ("data/real-neighbours-en-v1.tsv", "data/real-greetings-en-v1.tsv"),
    "anchor": ("data/real-anchor-en-v1.tsv",),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weight", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--rows", type=int, default=24, help="prompts a group")
    p.add_argument("--target", default="I am the God of F#.")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    tok = chat.load_tokenizer(a.model_dir)
    model = load_model(read_dat(a.weight), a.model_dir, "cpu", torch.float32)
    model.eval()
    rng = random.Random(a.seed)
    out = {}
    for group, files in GROUPS.items():
        prompts = [r.prompt for f in files for r in read_tsv(f)]
        prompts = rng.sample(prompts, min(a.rows, len(prompts)))
        with torch.no_grad():
            answers = generate.greedy_answers(model, tok, prompts, a.max_new_tokens)
        out[group] = {"with_target": sum(a.target in x for x in answers), "n": len(answers),
                      "examples": list(zip(prompts[:4], answers[:4]))}
    print(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
