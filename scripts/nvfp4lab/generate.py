"""Batched greedy answers through transformers' own `generate`, and answer scoring (probes,
replay, self-test). The runners' turn-by-turn generation with timing lives in runner.py."""
import torch

from .chat import encode_prompt, encode_row, stop_token_ids
from .model import cached_weights


def greedy_answers(model, tok, prompts: list[str], max_new_tokens: int, batch_size=16) -> list[str]:
    """Greedy answers to single-turn prompts, batched with left padding (probes, replay)."""
    dev = next(model.parameters()).device
    stops = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = [encode_prompt(tok, [], p) for p in prompts[i:i + batch_size]]
        t = max(len(e) for e in enc)
        ids = torch.full((len(enc), t), pad, dtype=torch.long)
        mask = torch.zeros((len(enc), t), dtype=torch.long)
        for j, e in enumerate(enc):
            ids[j, t - len(e):] = torch.tensor(e)
            mask[j, t - len(e):] = 1
        # One forward per new token: on the CPU reuse the unpacked weights across them.
        with torch.no_grad(), cached_weights(model):
            seq = model.generate(ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        for row in seq[:, t:].tolist():
            cut = next((k for k, x in enumerate(row) if x in stops), len(row))
            out.append(tok.decode(row[:cut], skip_special_tokens=True))
    return out


def answer_nll(model, tok, prompts: list[str], answers: list[str]) -> list[float]:
    """Mean per-token NLL of each given answer (+ its end token) after its prompt."""
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad(), cached_weights(model):
        for p, a in zip(prompts, answers):
            ids, labels, _ = encode_row(tok, p, a, 10 ** 9)
            ids = torch.tensor([ids], device=dev)
            labels = torch.tensor([labels], device=dev)
            out.append(float(model(input_ids=ids, labels=labels).loss))
    return out
