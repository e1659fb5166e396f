"""The compiled NVFP4 ops (CPU kernels) against the plain-PyTorch reference, bit for bit."""
import pytest
import torch

from nvfp4lab import nvfp4_ref as R
from nvfp4lab import ops
from nvfp4lab.nvfp4_ref import NVFP4Error

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
INT_OF = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
          torch.uint8: torch.uint8}


def assert_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same shape, dtype and bit pattern (so -0.0 != +0.0 here, and NaN must match NaN)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    ia, ib = a.contiguous().view(INT_OF[a.dtype]), b.contiguous().view(INT_OF[b.dtype])
    bad = (ia != ib).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} mismatches, first at {bad[0].tolist()}: {a[tuple(bad[0])]} vs {b[tuple(bad[0])]}"


def check_all(w: torch.Tensor) -> None:
    """quantize / dequantize (3 dtypes) / fake_quantize of w against the reference."""
    q, s = ops.quantize(w)
    qr, sr = R.quantize_ref(w)
    assert_bits(q, qr)
    assert_bits(s, sr)
    for dt in DTYPES:
        assert_bits(ops.dequantize(q, s, dt), R.dequantize_ref(qr, sr, dt))
    assert_bits(ops.fake_quantize(w), R.fake_quantize_ref(w))


def edge_weight() -> torch.Tensor:
    """Hand-made blocks [N, 16] hitting every corner of the numerics."""
    rows = []
    e4m3 = R.e4m3_to_float(torch.arange(0, 127, dtype=torch.uint8))   # every finite non-negative scale
    mids = (e4m3[1:] + e4m3[:-1]) / 2                                   # ties between neighbouring scales
    thr = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    for sc in torch.cat([e4m3[1:], mids]):
        # amax = 6 * sc makes amax / 6 == sc exactly: representable scales and exact RNE ties
        for sign in (1.0, -1.0):
            b = torch.zeros(16)
            b[0] = 6 * sc * sign
            b[1:9] = thr * sc                                            # exact threshold ties (x == t)
            b[9:16] = -thr[:7] * sc
            rows.append(b)
            b2 = b.clone()
            b2[1:9] = torch.nextafter(thr * sc, torch.zeros(8))          # just below each threshold
            b2[9:16] = -torch.nextafter(thr[:7] * sc, torch.zeros(7))
            rows.append(b2)
    rows.append(torch.zeros(16))                                         # all-zero block
    rows.append(-torch.zeros(16))                                        # all -0.0
    b = torch.randn(16) * 0.01
    b[5] = 1e4                                                           # one huge outlier (scale saturates)
    rows.append(b)
    rows.append(torch.full((16,), 1e4))
    rows.append(torch.full((16,), -3e38))                                # near fp32 max
    b = torch.randn(16)
    b[3] = -0.01                                                         # small negative -> code 8 (-0)
    rows.append(b)
    for amax in (1e-3, 6 * 2.0 ** -10, 6 * 2.0 ** -11, 6 * 1.5 * 2.0 ** -9, 5e-3, 1e-5, 1e-30, 1e-42):
        b = torch.linspace(-amax, amax, 16)                              # subnormal / zero scales
        b[0] = -1e-45 if amax > 1e-40 else b[0]
        rows.append(b)
    return torch.stack(rows)


# ---------------------------------------------------------------- bit-exactness
@pytest.mark.parametrize("shape", [(1, 16), (3, 48), (64, 256), (37, 1040)])
@pytest.mark.parametrize("scale", [1e-4, 0.02, 1.0, 300.0, 1e4])
def test_random_fp32(shape, scale):
    check_all(torch.randn(shape) * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_half_inputs(dtype):
    w = (torch.randn(48, 320) * torch.logspace(-3, 2, 48).unsqueeze(1)).to(dtype)
    check_all(w)


def test_heavy_tailed():
    w = torch.randn(128, 512) * torch.exp(torch.randn(128, 512) * 2)   # scales spread over many binades
    check_all(w)


def test_edge_blocks():
    w = edge_weight()
    check_all(w)
    check_all(w.to(torch.bfloat16))
    check_all(w.clamp(-6e4, 6e4).to(torch.float16))


def test_noncontiguous_input():
    w = torch.randn(64, 96).t()[:, :48]                                  # [96, 48] view with strides
    check_all(w)


def test_e4m3_all_256_bytes():
    """Dequantize with every scale byte (NaN bytes included) and every code."""
    scale = torch.arange(256, dtype=torch.uint8).reshape(256, 1)
    codes = torch.arange(16, dtype=torch.uint8)
    q = (codes[0::2] | (codes[1::2] << 4)).repeat(256, 1)                # [256, 8]: codes 0..15
    for dt in DTYPES:
        out, ref = ops.dequantize(q, scale, dt), R.dequantize_ref(q, scale, dt)
        nan = torch.isnan(ref)
        assert torch.equal(torch.isnan(out), nan)
        assert_bits(out[~nan], ref[~nan])
    one = R.e4m3_to_float(scale.flatten())                                # code 2 is 1.0
    got = ops.dequantize(torch.full((256, 8), 0x22, dtype=torch.uint8), scale)[:, 0]
    fin = ~torch.isnan(one)
    assert_bits(got[fin], one[fin])


def test_e4m3_rounding_random():
    """Scale bytes for 200k amax values, log-uniform over 2^-24 .. 2^12 (subnormals, ties, saturation)."""
    amax = torch.exp2(torch.rand(200_000) * 36 - 24)
    # plus amax a few fp32 ulps around 6 * (every midpoint between e4m3 values): amax / 6 then lands
    # on or next to a tie, where a reciprocal multiply instead of a true division would differ
    e4m3 = R.e4m3_to_float(torch.arange(0, 127, dtype=torch.uint8))
    near = 6 * (e4m3[1:] + e4m3[:-1]) / 2
    for _ in range(4):
        near = torch.cat([torch.nextafter(near, torch.tensor(0.0)), near, torch.nextafter(near, torch.tensor(1e9))])
    amax = torch.cat([amax, near.unique()])
    w = torch.zeros(amax.numel(), 16)
    w[:, 0] = amax
    w[:, 1] = -amax * torch.rand(amax.numel())
    _, s = ops.quantize(w)
    assert_bits(s, R.quantize_ref(w)[1])


@pytest.mark.parametrize("ddtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("odtype", DTYPES)
def test_fake_quantize_delta(ddtype, odtype):
    w = torch.randn(96, 512) * 0.05
    q, s = ops.quantize(w)
    for dscale in (1e-4, 1e-2, 1.0):
        delta = (torch.randn(96, 512) * dscale).to(ddtype)
        ref = R.fake_quantize_ref(R.dequantize_ref(q, s, torch.float32) + delta.float()).to(odtype)
        assert_bits(ops.fake_quantize_delta(q, s, delta, odtype), ref)


def test_fake_quantize_delta_edges():
    w = edge_weight()
    q, s = ops.quantize(w)
    delta = torch.randn(w.shape) * w.abs().clamp(max=1e4) * 0.3
    delta[::3] = 0.0
    for ddtype in (torch.float32, torch.bfloat16):
        d = delta.to(ddtype)
        ref = R.fake_quantize_ref(R.dequantize_ref(q, s) + d.float())
        assert_bits(ops.fake_quantize_delta(q, s, d, torch.float32), ref)
        assert_bits(ops.fake_quantize_delta(q, s, d, torch.bfloat16), ref.to(torch.bfloat16))


def test_idempotence():
    """Quantizing a dequantized weight gives it back. Bytes may differ only for code 8 (-0 becomes +0)
    and for zero-scale blocks (their codes decode to 0 whatever they are). Random data here keeps
    scales normal: with subnormal e4m3 scales (bytes 1 and 2) the RNE'd scale can leave the block's
    largest code below 6, and requantizing then picks a smaller scale."""
    w = torch.randn(64, 512) * torch.logspace(-1, 1, 64).unsqueeze(1)
    w[0, :16] = 0.0
    w[1, :16] = 1e-9
    q, s = ops.quantize(w)
    d = ops.dequantize(q, s)
    q2, s2 = ops.quantize(d)
    assert torch.equal(ops.dequantize(q2, s2), d)
    codes, codes2 = R.unpack_codes(q), R.unpack_codes(q2)
    zero_scale = (s == 0).repeat_interleave(16, dim=1)
    keep = (codes != 8) & ~zero_scale
    assert keep.float().mean() > 0.8
    assert torch.equal(codes[keep], codes2[keep])
    assert torch.equal(s, s2)


# ---------------------------------------------------------------- linear
@pytest.mark.parametrize("m", [1, 3, 8, 33])
def test_linear_fp32(m):
    w = torch.randn(200, 320)
    q, s = ops.quantize(w)
    x = torch.randn(m, 320)
    y = ops.linear(x, q, s)
    ref = x @ R.dequantize_ref(q, s).T
    assert y.dtype == torch.float32 and y.shape == (m, 200)
    assert ((y - ref).norm() / ref.norm()).item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_half_and_batch_shape(dtype):
    q, s = ops.quantize(torch.randn(64, 128))
    x = torch.randn(2, 5, 128).to(dtype)
    y = ops.linear(x, q, s)
    assert y.shape == (2, 5, 64) and y.dtype == dtype
    ref = x.float() @ R.dequantize_ref(q, s).T
    assert ((y.float() - ref).norm() / ref.norm()).item() <= 1e-2


# ---------------------------------------------------------------- errors and the torch.ops surface
@pytest.mark.parametrize("bad, msg", [
    (torch.randn(4, 24), "not a multiple of 16"),
    (torch.randn(32), "2-D"),
    (torch.randint(0, 5, (4, 16)), "dtype"),
    (torch.tensor([[float("nan")] + [0.0] * 15]), "NaN or Inf"),
    (torch.tensor([[float("inf")] + [0.0] * 15]), "NaN or Inf"),
])
def test_bad_weight(bad, msg):
    with pytest.raises(NVFP4Error, match=msg):
        ops.quantize(bad)
    if "NaN" not in msg:
        with pytest.raises(NVFP4Error, match=msg):
            ops.fake_quantize(bad)


def test_bad_packed():
    q, s = ops.quantize(torch.randn(8, 64))
    with pytest.raises(NVFP4Error, match="do not describe"):
        ops.dequantize(q, s[:, :2])
    with pytest.raises(NVFP4Error, match="uint8"):
        ops.dequantize(q.float(), s)
    with pytest.raises(NVFP4Error, match="features"):
        ops.linear(torch.randn(2, 48), q, s)
    with pytest.raises(ValueError, match="not a multiple of 16"):          # the C++ check, same words
        torch.ops.nvfp4.quantize(torch.randn(4, 24))
    with pytest.raises(ValueError, match="delta"):
        torch.ops.nvfp4.fake_quantize_delta(q, s, torch.randn(8, 32), torch.float32)


def test_torch_ops_surface():
    w = torch.randn(32, 64)
    q, s = torch.ops.nvfp4.quantize(w)
    qr, sr = R.quantize_ref(w)
    assert_bits(q, qr)
    assert_bits(s, sr)
    assert_bits(torch.ops.nvfp4.dequantize(q, s, torch.bfloat16), R.dequantize_ref(q, s, torch.bfloat16))
    assert_bits(torch.ops.nvfp4.fake_quantize(w), R.fake_quantize_ref(w))
    d = torch.randn(32, 64) * 0.01
    assert_bits(torch.ops.nvfp4.fake_quantize_delta(q, s, d, torch.float32), R.fake_quantize_ref(R.dequantize_ref(q, s) + d))
    x = torch.randn(2, 64)
    assert torch.allclose(torch.ops.nvfp4.linear(x, q, s), x @ R.dequantize_ref(q, s).T, rtol=1e-5, atol=1e-5)
    empty_q, empty_s = ops.quantize(torch.randn(0, 32))
    assert empty_q.shape == (0, 16) and empty_s.shape == (0, 2)


def test_fake_kernels_opcheck():
    """Schema + fake (meta) kernels agree with the real ones: what torch.compile and graphs rely on."""
    w = torch.randn(16, 64)
    q, s = ops.quantize(w)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.nvfp4.quantize.default, (w,), test_utils=tests)
    torch.library.opcheck(torch.ops.nvfp4.dequantize.default, (q, s, torch.bfloat16), test_utils=tests)
    torch.library.opcheck(torch.ops.nvfp4.fake_quantize.default, (w,), test_utils=tests)
    torch.library.opcheck(torch.ops.nvfp4.fake_quantize_delta.default, (q, s, w, torch.float16), test_utils=tests)
    torch.library.opcheck(torch.ops.nvfp4.linear.default, (torch.randn(3, 64), q, s), test_utils=tests)


def test_torch_compile_fullgraph():
    q, s = ops.quantize(torch.randn(32, 64))
    d = torch.randn(32, 64) * 0.01

    def f(x):
        return ops.linear(x, q, s) + x @ ops.fake_quantize_delta(q, s, d, torch.float32).T

    x = torch.randn(4, 64)
    torch._dynamo.reset()
    got = torch.compile(f, backend="eager", fullgraph=True)(x)
    assert torch.allclose(got, f(x))
