"""ops.decode_attention (one query a row over a grouped KV cache) against torch's own SDPA, and
the decoders with it on and off. The CPU op is the reference the CUDA kernel is held to; the
CUDA tests run on the GPU machine."""
import pytest
import torch
import torch.nn.functional as F

from nvfp4lab import ops
from nvfp4lab.attention import decode_sdpa

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def sdpa_reference(q, k, v, mask, scale):
    """torch SDPA in fp32 with the KV heads repeated: q [B, Hq, D] -> [B, Hq, D]."""
    group = q.shape[1] // k.shape[1]
    kf, vf = (t.float().repeat_interleave(group, 1) for t in (k, v))
    m = None if mask is None else mask.float()[:, None, None, :]
    out = F.scaled_dot_product_attention(q.float()[:, :, None], kf, vf, attn_mask=m, scale=scale)
    return out[:, :, 0]


def case(b=3, hq=8, hkv=2, length=40, d=64, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=g).to(device, dtype) for s in
               [(b, hq, d), (b, hkv, length, d), (b, hkv, length, d)])
    # rows see different prefixes; the unwritten tail is -inf (and filled with junk that must
    # not matter)
    live = torch.tensor([length - 7, length // 2, 1][:b])
    mask = torch.full((b, length), -torch.inf)
    for r, n in enumerate(live):
        mask[r, :n] = 0.0
    mask[0, 3] = -torch.inf                                # a hole inside the prefix
    k[0, :, live[0]:] = 1e4
    return q, k, v, mask.to(device, dtype)


def test_cpu_op_is_grouped_sdpa_and_reads_no_masked_column():
    q, k, v, mask = case()
    got = ops.decode_attention(q, k, v, mask, 0.125)
    assert got.shape == q.shape
    torch.testing.assert_close(got, sdpa_reference(q, k, v, mask, 0.125), rtol=1e-5, atol=1e-5)
    one = ops.decode_attention(q, k, v, mask[:1], 0.125)      # a [1, L] mask serves every row
    torch.testing.assert_close(one, sdpa_reference(q, k, v, mask[:1].expand_as(mask), 0.125))
    mask[2] = -torch.inf                                       # nothing to attend: zeros, no NaN
    assert ops.decode_attention(q, k, v, mask, 0.125)[2].abs().max() == 0


def test_off_the_gpu_the_attention_function_is_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    q, k, v, mask = case()
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 4, True
    q4, m4 = q[:, :, None], mask[:, None, None]
    got, _ = decode_sdpa(module, q4, k, v, m4, scaling=0.125)
    want, _ = sdpa_attention_forward(module, q4, k, v, m4, scaling=0.125)
    assert torch.equal(got, want)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [dict(d=128, hq=32, hkv=8, length=256), dict(d=64, hq=9, hkv=3),
                                   dict(d=16, hq=4, hkv=4, length=5)])
def test_cuda_kernel_matches_the_reference(dtype, shape):
    q, k, v, mask = case(dtype=dtype, **shape)
    ref = ops.decode_attention(q, k, v, mask, 0.1)             # CPU, fp32 math
    got = ops.decode_attention(q.cuda(), k.cuda(), v.cuda(), mask.cuda(), 0.1).cpu()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
    # strided inputs (a query view, caches longer than L, a mask slice) give the same
    n = k.shape[2]
    qs = torch.cat([q, q], -1).cuda()[..., :q.shape[-1]]
    ks, vs = (torch.cat([t, t], 2).cuda()[:, :, :n] for t in (k, v))
    ms = torch.cat([mask, mask], 1).cuda()[:, :n]
    got2 = ops.decode_attention(qs, ks, vs, ms, 0.1).cpu()
    torch.testing.assert_close(got2, got)


@cuda
def test_cuda_decoders_give_the_same_tokens_with_and_without_the_kernel(tiny_qwen):
    from nvfp4lab import chat
    from nvfp4lab.batch_decode import BatchDecoder
    from nvfp4lab.dat import read_dat
    from nvfp4lab.decode import StaticDecoder
    from nvfp4lab.model import load_model
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cuda", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    ids = chat.encode_prompt(tok, [], "你是誰")
    runs = {}
    for fast in (False, True):
        dec = StaticDecoder(model)
        dec.fast_attention = fast
        runs[fast] = dec.greedy(ids, 12, stops=[])[0]
        batch = BatchDecoder(model, 2, 128)
        batch.fast_attention = fast
        runs[fast, "batch"] = batch.greedy([ids, ids[:-3]], 12, stops=[], pad=0)
    assert model.config._attn_implementation == "sdpa"       # switched back after each call
    assert runs[True] == runs[False] and runs[True, "batch"] == runs[False, "batch"]
