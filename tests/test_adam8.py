"""--adam-state-bits 8 (nvfp4lab/adam8.py over torch.ops.nvfp4.adam8_step_): AdamW whose two states
take one byte a value must train as torch's AdamW does, in a quarter of its state memory."""
import pytest
import torch

import train  # scripts/ is on sys.path (conftest)
from nvfp4lab import chat, trainer
from nvfp4lab.adam8 import BLOCK, AdamW8bit, state_bytes
from nvfp4lab.dat import read_dat
from nvfp4lab.model import DTYPES, load_model, make_trainable


def heavy_tailed_grads(n: int, steps: int, seed: int):
    """Gradients whose scale spans four orders of magnitude inside every block of 256 values, as
    a model's do (a linear 8-bit code would round most of them to 0)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-4, 0, n)[torch.randperm(n, generator=g)]
    return [(torch.randn(n, generator=g) + 0.3) * scale for _ in range(steps)]


def run(opt_cls, p0: torch.Tensor, grads, **kw) -> torch.Tensor:
    p = p0.clone().requires_grad_()
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_first_step_is_adamws_and_later_ones_stay_close():
    """Step 1 uses exact m and v (only what is kept is coded), so it is AdamW's to rounding; after
    100 steps of heavy-tailed gradients the movement differs from AdamW's by a few percent."""
    p0 = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    grads = heavy_tailed_grads(20000, 100, seed=1)
    kw = {"lr": 1e-3, "weight_decay": 0.01}
    one8, one = run(AdamW8bit, p0, grads[:1], **kw), run(torch.optim.AdamW, p0, grads[:1], **kw)
    assert torch.allclose(one8, one, rtol=0, atol=1e-6)
    ref = run(torch.optim.AdamW, p0, grads, **kw)
    ours = run(AdamW8bit, p0, grads, **kw)
    rel = float((ours - ref).norm() / (ref - p0).norm())
    assert rel < 0.08, rel
    # the typical value (most have gradients far below their block's largest) moves as far as
    # under AdamW: a code that rounded small states to 0 would leave them behind
    assert float((ours - p0).abs().median() / (ref - p0).abs().median()) > 0.9


def test_regression_converges_like_adamw():
    """A least-squares fit with features of scales 0.01-10 reaches AdamW's loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=g) * torch.logspace(-2, 1, 64)
    y = x @ torch.randn(64, 8, generator=g) + 0.01 * torch.randn(512, 8, generator=g)
    final = {}
    for opt_cls in (torch.optim.AdamW, AdamW8bit):
        w = torch.zeros(64, 8, requires_grad=True)
        opt = opt_cls([w], lr=1e-2, weight_decay=0.0)
        for _ in range(300):
            loss = ((x @ w - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        final[opt_cls] = float(loss.detach())
    assert abs(final[AdamW8bit] - final[torch.optim.AdamW]) / final[torch.optim.AdamW] < 0.02, final


def test_states_take_two_bytes_and_a_bit_a_value():
    p = torch.zeros(1000, dtype=torch.bfloat16, requires_grad=True)
    opt = AdamW8bit([p], lr=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    held = sum(t.numel() * t.element_size() for t in opt.state[p].values() if torch.is_tensor(t))
    assert held == state_bytes(1000) == 2 * (1000 + 4 * 4)
    assert held / 1000 < 2.04 and -(-1000 // BLOCK) == 4
    assert torch.all(p < 0)   # moved against the gradient


def test_bad_input_is_one_clear_error():
    p = torch.zeros(300)
    m, s = torch.zeros(300, dtype=torch.uint8), torch.zeros(300, dtype=torch.uint8)
    scales = torch.zeros(2), torch.zeros(2)
    with pytest.raises(ValueError, match="adam8_step_: grad"):
        torch.ops.nvfp4.adam8_step_(p, torch.zeros(300, dtype=torch.float16), m, scales[0], s,
                                    scales[1], 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.001)
    with pytest.raises(ValueError, match="one per 256 values"):
        torch.ops.nvfp4.adam8_step_(p, torch.zeros(300), m, torch.zeros(1), s, scales[1],
                                    1e-3, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.001)


def test_an_error_in_the_extension_is_a_python_error_not_a_crash():
    """The extension links the shared libstdc++ (cuda/build.py). With a private static copy (the
    H200's g++ wrapper gave one) the first TORCH_CHECK message holding a number segfaulted."""
    import shutil
    import subprocess
    from nvfp4lab import _nvfp4_C
    if shutil.which("readelf") is None:
        pytest.skip("no readelf")
    needed = subprocess.run(["readelf", "-d", _nvfp4_C.__file__], capture_output=True, text=True,
                            check=True).stdout
    assert "[libstdc++.so.6]" in needed
    with pytest.raises(ValueError, match=r"got shape \[3\]"):
        torch.ops.nvfp4.quantize(torch.zeros(3))


def test_the_flag_trains_the_tiny_model_as_16_bit_states_do(tiny_qwen):
    """StepInBackward with --adam-state-bits 8 lowers the loss of a tiny Qwen3 as the default
    does: the two loss curves stay within 1% of each other over 15 steps."""
    assert train.parse_args(["--mix", "x.tsv:1", "--adam-state-bits", "8"]).adam_state_bits == 8
    model_dir, dat_path = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "target")] * 4
    curves = {}
    for bits in (16, 8):
        torch.manual_seed(0)
        model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
        deltas = make_trainable(model, DTYPES["bfloat16"])
        batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
        stepper = trainer.StepInBackward(deltas, {g: 1e-3 for g in trainer.GROUPS}, 0.0, 1.0,
                                         state_bits=bits)
        losses = []
        for _ in range(15):
            loss = trainer.batch_loss(model, batch, anchor, 0.0)[0]
            losses.append(float(loss.detach()))
            loss.backward()
            stepper.flush()
        kinds = {type(b["opt"]).__name__ for b in stepper.buckets}
        stepper.close()
        assert kinds == {"AdamW8bit" if bits == 8 else "AdamW"}
        curves[bits] = losses
    assert curves[8][-1] < 0.9 * curves[8][0], curves[8]
    assert max(abs(a - b) / b for a, b in zip(curves[8], curves[16])) < 0.01, curves


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kernel_matches_the_cpu_one():
    """The same functions of nvfp4_common.h on both devices: after 20 steps the values agree to a
    bf16 rounding and the codes almost everywhere (log2f may differ by an ulp at a code edge)."""
    p0 = torch.randn(100_003, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    grads = [g.to(torch.bfloat16) for g in heavy_tailed_grads(100_003, 20, seed=2)]
    out = {}
    for dev in ("cpu", "cuda"):
        p = p0.clone().to(dev).requires_grad_()   # a leaf on each device (p0 stays as it is)
        opt = AdamW8bit([p], lr=1e-3, weight_decay=0.01)
        for g in grads:
            p.grad = g.to(dev)
            opt.step()
        out[dev] = p.detach().cpu().float(), {k: v.cpu() for k, v in opt.state[p].items()
                                              if torch.is_tensor(v)}
    (pc, sc), (pg, sg) = out["cpu"], out["cuda"]
    assert torch.allclose(pc, pg, rtol=1e-2, atol=1e-6)
    for k in ("m", "s"):
        assert float((sc[k] != sg[k]).float().mean()) < 1e-3, k
