"""The runners' chat session: a conversation that keeps its history, one turn at a time, and the
original's chat-session tee files (text and JSONL).
"""
import datetime
import json
import os

from transformers import DynamicCache

from .chat import encode_prompt
from .decode import StaticDecoder
from .fuse import fuse_siblings
from .runner import empty_device_cache, watchdog
from .runner_generate import generate, print_answer, print_timing


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
        if greedy and getattr(args, "fused_gemv", False):
            fuse_siblings(model)   # q/k/v and gate/up through one GEMV each (same answers)
        self.decoder = (StaticDecoder(model, compile_step=getattr(args, "compile_step", False))
                        if greedy else None)
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
