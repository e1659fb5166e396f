"""fuse.fuse_siblings: q/k/v and gate/up read by one GEMV, answers unchanged."""
import pytest
import torch

from nvfp4lab import chat, ops
from nvfp4lab.dat import read_dat
from nvfp4lab.decode import StaticDecoder
from nvfp4lab.fuse import fuse_siblings
from nvfp4lab.model import NVFP4Linear, load_model


def load(tiny_qwen):
    model_dir, dat_path = tiny_qwen
    return load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32), str(model_dir)


def test_siblings_become_views_of_one_stacked_weight(tiny_qwen):
    model, _ = load(tiny_qwen)
    layer = model.model.layers[0]
    before = {n: (m.qdata.clone(), m.scale.clone()) for n, m in layer.named_modules()
              if isinstance(m, NVFP4Linear)}
    layers = len(model.model.layers)
    assert fuse_siblings(model) == 2 * layers and fuse_siblings(model) == 0   # idempotent
    attn, mlp = layer.self_attn, layer.mlp
    group = attn.q_proj.fused[0]
    assert group is attn.k_proj.fused[0] is attn.v_proj.fused[0] and mlp.gate_proj.fused[0] is not group
    assert attn.o_proj.fused is None and mlp.down_proj.fused is None      # no sibling: as before
    for name, (q, s) in before.items():   # the stored weights are the same, now slices of one
        m = layer.get_submodule(name)
        assert torch.equal(m.qdata, q) and torch.equal(m.scale, s)
    assert attn.k_proj.qdata.data_ptr() == group.qdata.data_ptr() + attn.q_proj.qdata.numel()


def test_followers_take_the_leaders_columns_and_recompute_for_another_input(tiny_qwen):
    model, _ = load(tiny_qwen)
    fuse_siblings(model)
    attn = model.model.layers[1].self_attn
    x = torch.randn(1, 1, attn.q_proj.in_features)
    q = attn.q_proj.fused_linear(x)
    k = attn.k_proj.fused_linear(x)
    assert torch.equal(q, ops.linear(x, attn.q_proj.qdata, attn.q_proj.scale))
    assert k.data_ptr() != ops.linear(x, attn.k_proj.qdata, attn.k_proj.scale).data_ptr()
    torch.testing.assert_close(k, ops.linear(x, attn.k_proj.qdata, attn.k_proj.scale),
                               rtol=0, atol=1e-6)
    other = torch.randn_like(x)   # not the leader's input: its own rows, computed now
    assert torch.equal(attn.v_proj.fused_linear(other),
                       ops.linear(other, attn.v_proj.qdata, attn.v_proj.scale))


def test_fused_decoding_gives_the_same_greedy_tokens_eager_and_compiled(tiny_qwen, monkeypatch):
    model, model_dir = load(tiny_qwen)
    tok = chat.load_tokenizer(model_dir)
    ids = chat.encode_prompt(tok, [], "你是誰")
    plain, _ = StaticDecoder(model).greedy(ids, 12, stops=[])
    fuse_siblings(model)
    calls = []
    real = ops.linear
    monkeypatch.setattr(ops, "linear", lambda x, q, s: calls.append(q.shape[0]) or real(x, q, s))
    fused, _ = StaticDecoder(model).greedy(ids, 12, stops=[])
    monkeypatch.setattr(ops, "linear", real)
    # each decode step: one GEMV per group (q+k+v rows, gate+up rows) and layer, no fallback
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    stacked = {attn.q_proj.fused[0].qdata.shape[0], mlp.gate_proj.fused[0].qdata.shape[0]}
    assert set(calls) == stacked and len(calls) == 11 * 2 * len(model.model.layers)
    torch._dynamo.reset()
    compiled, _ = StaticDecoder(model, compile_step=True).greedy(ids, 12, stops=[])
    torch._dynamo.reset()
    assert fused == plain and compiled == plain


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_each_siblings_rows_are_the_unfused_gemv_bit_for_bit(tiny_qwen):
    """The GEMV's sums for a row depend on K and the launch shape, not on how many rows the
    weight has, so a fused group's columns equal each sibling's own GEMV exactly."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cuda", torch.bfloat16)
    fuse_siblings(model)
    for layer in model.model.layers:
        for group in ((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                      (layer.mlp.gate_proj, layer.mlp.up_proj)):
            for m_rows in (1, 3, 8):
                x = torch.randn(m_rows, group[0].in_features, device="cuda", dtype=torch.bfloat16)
                outs = [m.fused_linear(x) for m in group]
                for m, y in zip(group, outs):
                    assert torch.equal(y, ops.linear(x, m.qdata.contiguous(), m.scale.contiguous()))
