"""Generation through transformers' own `generate` (greedy by default), plus answer scoring."""
import torch

from .chat import encode_prompt, stop_token_ids


def generate_ids(model, tok, prompt_ids: list[int], max_new_tokens: int, use_cache=True,
                 temp=0.0, top_p=1.0, seed=123, output_logits=False):
    """One prompt -> (new token ids, per-step logits or None). Stops on the model's stop tokens."""
    dev = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=dev)
    kw = dict(max_new_tokens=max_new_tokens, use_cache=use_cache,
              eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id or stop_token_ids(tok)[0],
              return_dict_in_generate=True, output_logits=output_logits)
    if temp > 0:
        torch.manual_seed(seed)
        kw.update(do_sample=True, temperature=temp, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    new = out.sequences[0, ids.shape[1]:].tolist()
    stops = set(stop_token_ids(tok))
    for i, t in enumerate(new):
        if t in stops:
            new = new[:i]
            break
    return new, (out.logits if output_logits else None)


def answer(model, tok, message: str, history=(), max_new_tokens=24, **kw) -> str:
    ids, _ = generate_ids(model, tok, encode_prompt(tok, list(history), message), max_new_tokens, **kw)
    return tok.decode(ids, skip_special_tokens=True)


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
        with torch.no_grad():
            seq = model.generate(ids.to(dev), attention_mask=mask.to(dev), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        for row in seq[:, t:].tolist():
            cut = next((k for k, x in enumerate(row) if x in stops), len(row))
            out.append(tok.decode(row[:cut], skip_special_tokens=True))
    return out


def answer_nll(model, tok, prompts: list[str], answers: list[str]) -> list[float]:
    """Mean per-token NLL of each given answer (+ its end token) after its prompt."""
    from .chat import encode_row
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for p, a in zip(prompts, answers):
            ids, labels, _ = encode_row(tok, p, a, 10 ** 9)
            ids = torch.tensor([ids], device=dev)
            labels = torch.tensor([labels], device=dev)
            out.append(float(model(input_ids=ids, labels=labels).loss))
    return out
