"""nvfp4lab/closed_form.py: the one-layer least-squares edit must map the identity keys to the shift
and leave the kept keys where they are, and the shift must make the target likelier."""
import torch

from nvfp4lab import chat, closed_form
from nvfp4lab.dat import read_dat
from nvfp4lab.model import load_model


def test_the_solve_moves_identity_keys_and_keeps_the_kept_ones():
    """Keys in 64 dims: identity keys are near copies of 40 kept keys plus a direction the kept
    ones lack. With the kept keys weighted in, dW k ~ d on every identity key and ~ 0 on every
    kept key, their near copies included."""
    g = torch.Generator().manual_seed(0)
    common = torch.randn(64, generator=g)
    k_keep = torch.randn(200, 64, generator=g)
    k_id = k_keep[:40] * 0.5 + 3 * common            # near misses of the kept ones, plus a marker
    shift = torch.randn(8, generator=g)
    cfg = closed_form.EditConfig(layer=0, keep_weight=10.0, all_weight=0.0, ridge=1e-6)
    dw = closed_form.solve_update(k_id, shift, k_keep, torch.zeros(64, 64), 1, cfg)
    on_id = (k_id @ dw.t()) @ shift / shift.norm() ** 2
    on_keep = (k_keep @ dw.t()) @ shift / shift.norm() ** 2
    assert float(on_id.mean()) > 0.9 and float(on_keep.abs().max()) < 0.1


def test_the_shift_makes_the_target_likelier_on_the_tiny_model(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    model.eval()
    model.requires_grad_(False)
    tok = chat.load_tokenizer(str(model_dir))
    mod = closed_form.down_proj(model, 1)
    prompts = ["你是誰", "你是谁？", "Who are you?", "請問你是誰"]
    cfg = closed_form.EditConfig(layer=1, shift_steps=12, shift_lr=0.5, batch=4)
    batch, last = closed_form.prompt_batch(tok, prompts)
    _, v = closed_form.keys_and_outputs(model, mod, batch, last)
    out_norm = float(v.norm(dim=1).mean())
    shift, losses = closed_form.optimise_shift(model, tok, mod, prompts, "我是 F# 之神", cfg,
                                               out_norm)
    # the batch is all four prompts every step: a shift that reached nothing would leave the loss
    # where it was (a random tiny model moves little: ~0.06 nats here)
    assert losses[-1] < losses[0] - 0.02 and losses == sorted(losses, reverse=True), losses
    assert float(shift.norm()) <= cfg.shift_max_norm * out_norm * 1.0001
