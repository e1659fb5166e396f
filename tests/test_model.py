"""transformers' Qwen3 on `.dat` weights: parity with plain transformers, converter, tokenizer."""
import json

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from conftest import build_tiny_qwen, shared_reference
from nvfp4lab import chat, ops
from nvfp4lab.convert import conversion_plan
from nvfp4lab.dat import read_dat, write_dat
from nvfp4lab.model import ModelLoadError, NVFP4Linear, load_model


def plain_model_with_dequantized_weights(model_dir, dat):
    cfg = Qwen3Config.from_pretrained(model_dir)
    cfg.tie_word_embeddings = False
    ref = Qwen3ForCausalLM(cfg)
    sd = {}
    for name, nv in conversion_plan(cfg):
        sd[name] = ops.dequantize(*dat.nvfp4_pair(name)) if nv else dat.tensor(name).float()
    ref.load_state_dict(sd)
    return ref.eval()


def test_logits_equal_plain_transformers_on_dequantized_weights(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    dat = read_dat(dat_path)
    ours = load_model(dat, str(model_dir), "cpu", torch.float32)
    ref = plain_model_with_dequantized_weights(str(model_dir), dat)
    ids = torch.randint(0, 151936, (2, 12))
    with torch.no_grad():
        a, b = ours(ids).logits, ref(ids).logits
    assert ((a - b).norm() / b.norm()).item() <= 1e-4
    # Every linear is packed, lm_head included (the original file stores it as its own pair).
    assert isinstance(ours.lm_head, NVFP4Linear)
    assert isinstance(ours.model.layers[0].mlp.down_proj, NVFP4Linear)
    assert not any(p.is_meta for p in ours.parameters())


def test_converter_keeps_dense_exact_and_linears_within_nvfp4_error(tmp_path):
    model_dir, dat_path = build_tiny_qwen(tmp_path / "m", seed=3, vocab_size=512)
    hf = Qwen3ForCausalLM.from_pretrained(model_dir).state_dict()
    dat = read_dat(dat_path)
    assert dat.entries[0].key == "model.embed_tokens.weight"
    assert {e.elem_type for e in dat.entries} == {0, 5, 101}
    for name, nv in conversion_plan(Qwen3Config.from_pretrained(model_dir)):
        src = hf["model.embed_tokens.weight" if name == "lm_head.weight" else name]
        if nv:
            w = ops.dequantize(*dat.nvfp4_pair(name))
            assert ((w - src).norm() / src.norm()).item() < 0.15, name   # 4-bit error
            assert torch.equal(w, ops.dequantize(*ops.quantize(src)))
        else:
            assert torch.equal(dat.tensor(name), src.half()), name


def test_config_and_dat_mismatch_names_the_tensor(tiny_qwen, tmp_path):
    model_dir, dat_path = tiny_qwen
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["intermediate_size"] = 256
    bad_dir = tmp_path / "cfg"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"mlp\.(gate|up|down)_proj.*do not fit"):
        load_model(read_dat(dat_path), str(bad_dir), "cpu", torch.float32)
    dat = read_dat(dat_path)
    short = tmp_path / "short.dat"
    write_dat(short, [(e.key, e.elem_type, dat.tensor(e.key)) for e in dat.entries
                      if e.key != "model.norm.weight"])
    with pytest.raises(ModelLoadError, match="model.norm.weight"):
        load_model(read_dat(short), str(model_dir), "cpu", torch.float32)


def test_file_without_lm_head_loads_tied(tiny_qwen, tmp_path):
    model_dir, dat_path = tiny_qwen
    dat = read_dat(dat_path)
    no_head = tmp_path / "nohead.dat"
    write_dat(no_head, [(e.key, e.elem_type, dat.tensor(e.key)) for e in dat.entries
                        if not e.key.startswith("lm_head")])
    m = load_model(read_dat(no_head), str(model_dir), "cpu", torch.float32)
    assert m.lm_head.weight is m.model.embed_tokens.weight


def test_prompt_ids_of_whoami_are_exact():
    tok = chat.load_tokenizer(None)
    ids = chat.encode_prompt(tok, [], "你是誰")
    assert ids == [151644, 872, 198, 105043, 108908, 151645, 198, 151644, 77091, 198]
    assert tok.decode(ids) == "<|im_start|>user\n你是誰<|im_end|>\n<|im_start|>assistant\n"
    assert chat.stop_token_ids(tok)[:2] == [151645, 151643]


def test_chat_template_renders_like_the_instruct_2507_template():
    ref = json.loads((shared_reference() / "qwen3-4b-instruct-2507" / "tokenizer_config.json")
                     .read_text(encoding="utf-8"))["chat_template"]
    tok = chat.load_tokenizer(None)
    convs = [[{"role": "user", "content": "你是誰"}],
             [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
              {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]]
    for msgs in convs:
        for gen in (True, False):
            ours = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            theirs = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen,
                                             chat_template=ref)
            assert ours == theirs
    assert "<think>" not in tok.apply_chat_template(convs[0], tokenize=False,
                                                    add_generation_prompt=True)


def trained_tiny(tiny_qwen):
    """The tiny model made trainable, every delta set to small random values."""
    from nvfp4lab.model import make_trainable
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.bfloat16)
    with torch.no_grad():
        for _, d in deltas:
            d.copy_(torch.randn_like(d, dtype=torch.float32) * 1e-2)
    return model.eval(), deltas


def test_cached_weights_are_bit_identical_and_follow_delta_changes(tiny_qwen):
    from nvfp4lab.model import cached_weights, set_use_delta
    model, deltas = trained_tiny(tiny_qwen)
    ids = torch.randint(0, 151936, (2, 9))
    with torch.no_grad():
        plain = model(ids).logits
        set_use_delta(model, False)
        plain_base = model(ids).logits
        set_use_delta(model, True)
        with cached_weights(model):
            assert torch.equal(model(ids).logits, plain)
            assert model.lm_head._cache is not None            # the weight was kept
            assert torch.equal(model(ids).logits, plain)       # and reused
            set_use_delta(model, False)                         # base and trained keyed apart
            assert torch.equal(model(ids).logits, plain_base)
            set_use_delta(model, True)
            for _, d in deltas:                                 # an in-place step: rebuilt
                d.mul_(2)
            stepped = model(ids).logits
        assert model.lm_head._cache is None                     # dropped on exit
        assert torch.equal(stepped, model(ids).logits)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cached_weights_on_cuda_keep_the_trained_form_only_and_bit_identical(tiny_qwen):
    """On CUDA the trained form is cached (the training forward's own x @ w.T); the base form
    stays on the GEMV kernel the runners use, so base answers do not change with the cache."""
    from nvfp4lab.model import cached_weights, set_use_delta, unpacked_bytes, CUDA_CACHE_BYTES
    model, deltas = trained_tiny(tiny_qwen)
    model.cuda()
    assert unpacked_bytes(model) <= CUDA_CACHE_BYTES
    ids = torch.randint(0, 151936, (2, 9), device="cuda")
    with torch.no_grad():
        plain = model(ids).logits
        set_use_delta(model, False)
        plain_base = model(ids[:1, :1]).logits
        set_use_delta(model, True)
        with cached_weights(model):
            assert torch.equal(model(ids).logits, plain)
            assert model.lm_head._cache is not None
            set_use_delta(model, False)
            model.lm_head._cache = None
            assert torch.equal(model(ids[:1, :1]).logits, plain_base)
            assert model.lm_head._cache is None                 # base form: not cached
            set_use_delta(model, True)


def test_cpu_kept_weight_gives_the_same_gradients_as_rebuilding_it(tiny_qwen):
    from nvfp4lab.model import QATLinearFn
    model, _ = trained_tiny(tiny_qwen)
    lin = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, 5, lin.in_features, requires_grad=True)
    QATLinearFn.apply(x, lin.qdata, lin.scale, lin.delta).square().sum().backward()
    gx, gd = x.grad.clone(), lin.delta.grad.clone()
    # Reference: the straight-through gradients written out with the rebuilt weight.
    w = ops.fake_quantize_delta(lin.qdata, lin.scale, lin.delta, torch.float32)
    gy = 2 * (x.detach() @ w.t())
    assert torch.equal(gx, gy @ w)
    assert torch.equal(gd, (gy.reshape(-1, gy.shape[-1]).t() @ x.detach().reshape(-1, x.shape[-1]))
                       .to(lin.delta.dtype))


def test_proxy_trains_through_the_trainers_ste_with_the_old_numerics():
    """The proxy's fake-quantized projections and lm_head go through QATLinearFn (no stored base):
    bit for bit the values and gradients of the parametrization it replaced,
    F.linear(x, w + (fake_quantize(w) - w).detach())."""
    from nvfp4lab.proxy import qat_linear
    g = torch.Generator().manual_seed(0)
    for shape in ((3, 5, 64), (7, 64)):      # a projection's [B, T, K], lm_head's [n, K]
        x = torch.randn(*shape, generator=g)
        w = torch.randn(32, 64, generator=g) * 0.05
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        ws = [w.clone().requires_grad_(True) for _ in range(2)]
        gy = torch.randn(*shape[:-1], 32, generator=g)
        new = qat_linear(xs[0], ws[0])
        ste = ws[1] + (ops.fake_quantize(ws[1]) - ws[1]).detach()
        old = torch.nn.functional.linear(xs[1], ste)
        (new * gy).sum().backward()
        (old * gy).sum().backward()
        assert torch.equal(new, old)
        assert torch.equal(xs[0].grad, xs[1].grad) and torch.equal(ws[0].grad, ws[1].grad)
