"""Keep the update away from what near-miss prompts feed each layer (AlphaEdit's null-space
projection, adapted to a trained delta): --protect-neighbours TOL.

For every projection W [out, in], the inputs x that the neighbour prompts (and their answers)
send into it are collected on the base model; K = sum x x^T [in, in]. Its eigenvectors whose
eigenvalue is below TOL * the largest span directions those inputs (almost) never use, and
P = U_null U_null^T projects onto them. After every optimizer step the delta becomes delta @ P,
so delta @ x ~ 0 for the neighbours' inputs: in full precision, their outputs stay the base's.

Under NVFP4 that guarantee is approximate: the forward uses requantize(base + delta), whose
rounding error is not in the null space. Whether the projection still helps is measured in the
study (doc/METHOD.md), not assumed.
"""
import torch

from . import chat
from .model import NVFP4Linear, deltas_off


@torch.no_grad()
def input_covariances(model, tok, messages_and_answers, seq_len: int, device) -> dict:
    """{NVFP4Linear: K [in, in] fp32} over every token of the given chats (base weights)."""
    cov, hooks = {}, []

    def hook(mod, inputs, _out):
        x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()   # one unpadded chat at a time
        cov[mod] = cov.get(mod, 0) + x.t() @ x

    for mod in model.modules():
        if isinstance(mod, NVFP4Linear) and mod.delta is not None:
            hooks.append(mod.register_forward_hook(hook))
    try:
        with deltas_off(model):
            for messages, answer in messages_and_answers:
                ids, _ = chat.encode_answer(tok, messages, answer)
                model(input_ids=torch.tensor([ids[:seq_len]], device=device))
    finally:
        for h in hooks:
            h.remove()
    return cov


def null_projector(k: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """P [in, in] onto the eigenvectors of K with eigenvalue <= rel_tol * the largest."""
    vals, vecs = torch.linalg.eigh(k.double())
    keep = vals <= rel_tol * vals.max().clamp_min(1e-30)
    u = vecs[:, keep]
    return (u @ u.t()).float()


MAX_ROWS = 256   # neighbour chats whose inputs make the covariances (enough for a 2560-wide input)


def neighbour_projectors(model, tok, rows, replay: dict, seq_len: int, rel_tol: float,
                         max_rows: int = MAX_ROWS, skip_head: bool = True) -> dict:
    """{delta parameter: P} for the projections (lm_head left free unless skip_head=False:
    its input is the final hidden state, where the identity itself has to be told apart)."""
    device = next(model.parameters()).device
    chats = [([{"role": "user", "content": r.prompt}], replay.get(r.prompt, r.target))
             for r in rows[:max_rows]]
    cov = input_covariances(model, tok, chats, seq_len, device)
    names = {mod: name for name, mod in model.named_modules()}
    return {mod.delta: null_projector(k, rel_tol) for mod, k in cov.items()
            if not (skip_head and names[mod] == "lm_head")}


@torch.no_grad()
def project_(params, projectors: dict) -> None:
    """delta <- delta @ P for every parameter that has a projector."""
    for p in params:
        proj = projectors.get(p)
        if proj is not None:
            p.copy_((p.float() @ proj).to(p.dtype))
