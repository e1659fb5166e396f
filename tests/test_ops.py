"""The compiled NVFP4 ops (CPU kernels) against the plain-PyTorch reference, bit for bit."""
import pytest
import torch

from nvfp4lab import nvfp4_ref
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
    qr, sr = nvfp4_ref.quantize_ref(w)
    assert_bits(q, qr)
    assert_bits(s, sr)
    for dt in DTYPES:
        assert_bits(ops.dequantize(q, s, dt), nvfp4_ref.dequantize_ref(qr, sr, dt))
    assert_bits(ops.fake_quantize(w), nvfp4_ref.fake_quantize_ref(w))


def edge_weight() -> torch.Tensor:
    """Hand-made blocks [N, 16] hitting every corner of the numerics."""
    rows = []
    e4m3 = nvfp4_ref.e4m3_to_float(torch.arange(0, 127, dtype=torch.uint8))   # every finite non-negative scale
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
        out, ref = ops.dequantize(q, scale, dt), nvfp4_ref.dequantize_ref(q, scale, dt)
        nan = torch.isnan(ref)
        assert torch.equal(torch.isnan(out), nan)
        assert_bits(out[~nan], ref[~nan])
    one = nvfp4_ref.e4m3_to_float(scale.flatten())                                # code 2 is 1.0
    got = ops.dequantize(torch.full((256, 8), 0x22, dtype=torch.uint8), scale)[:, 0]
    fin = ~torch.isnan(one)
    assert_bits(got[fin], one[fin])


def test_e4m3_rounding_random():
    """Scale bytes for 200k amax values, log-uniform over 2^-24 .. 2^12 (subnormals, ties, saturation)."""
    amax = torch.exp2(torch.rand(200_000) * 36 - 24)
    # plus amax a few fp32 ulps around 6 * (every midpoint between e4m3 values): amax / 6 then lands
    # on or next to a tie, where a reciprocal multiply instead of a true division would differ
    e4m3 = nvfp4_ref.e4m3_to_float(torch.arange(0, 127, dtype=torch.uint8))
    near = 6 * (e4m3[1:] + e4m3[:-1]) / 2
    for _ in range(4):
        near = torch.cat([torch.nextafter(near, torch.tensor(0.0)), near, torch.nextafter(near, torch.tensor(1e9))])
    amax = torch.cat([amax, near.unique()])
    w = torch.zeros(amax.numel(), 16)
    w[:, 0] = amax
    w[:, 1] = -amax * torch.rand(amax.numel())
    _, s = ops.quantize(w)
    assert_bits(s, nvfp4_ref.quantize_ref(w)[1])


@pytest.mark.parametrize("ddtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("odtype", DTYPES)
def test_fake_quantize_delta(ddtype, odtype):
    w = torch.randn(96, 512) * 0.05
    q, s = ops.quantize(w)
    for dscale in (1e-4, 1e-2, 1.0):
        delta = (torch.randn(96, 512) * dscale).to(ddtype)
        ref = nvfp4_ref.fake_quantize_delta_ref(q, s, delta, odtype)
        assert_bits(ops.fake_quantize_delta(q, s, delta, odtype), ref)
        q2, s2 = ops.requantize_delta(q, s, delta)
        qr, sr = nvfp4_ref.requantize_delta_ref(q, s, delta)
        assert_bits(q2, qr)
        assert_bits(s2, sr)
        assert_bits(ops.dequantize(q2, s2, odtype), ref)   # export writes what training computed


def test_fake_quantize_delta_edges():
    w = edge_weight()
    q, s = ops.quantize(w)
    delta = torch.randn(w.shape) * w.abs().clamp(max=1e4) * 0.3
    delta[::3] = 0.0
    for ddtype in (torch.float32, torch.bfloat16):
        d = delta.to(ddtype)
        ref = nvfp4_ref.fake_quantize_delta_ref(q, s, d)
        assert_bits(ops.fake_quantize_delta(q, s, d, torch.float32), ref)
        assert_bits(ops.fake_quantize_delta(q, s, d, torch.bfloat16), ref.to(torch.bfloat16))
        q2, s2 = ops.requantize_delta(q, s, d)
        qr, sr = nvfp4_ref.requantize_delta_ref(q, s, d)
        assert_bits(q2, qr)
        assert_bits(s2, sr)


def test_idempotence():
    """torchao's rule is idempotent on its own output: quantizing a dequantized weight gives the same
    bytes back, -0.0 (code 8) and floor-scale blocks included."""
    w = torch.randn(64, 512) * torch.logspace(-3, 1, 64).unsqueeze(1)
    w[0, :16] = 0.0
    w[1, :16] = 1e-9
    w[2, :16] = -0.0
    q, s = ops.quantize(w)
    q2, s2 = ops.quantize(ops.dequantize(q, s))
    assert_bits(q2, q)
    assert_bits(s2, s)


def codes_of(w: torch.Tensor) -> list[int]:
    q, _ = ops.quantize(w)
    return nvfp4_ref.unpack_codes(q)[0].tolist()


def test_quantizer_hand_table():
    """torchao's to_nvfp4 computed by hand: half-to-even ties, the 2^-6 scale floor, the 448 clamp,
    saturation at 6 and the sign of -0. (The old rule, ties up and floor 2^-16, fails every line.)"""
    # amax 6 -> scale exactly 1.0 (byte 0x38): x = w
    w = torch.tensor([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0,
                       -0.0, 0.0, -0.1, 0.2, 0.3, 5.5, -6.0, 0.5]])
    q, s = ops.quantize(w)
    assert s.tolist() == [[0x38]]
    assert codes_of(w) == [7, 0, 2, 2, 4, 4, 6, 6,
                           8, 0, 8, 0, 1, 7, 15, 1]
    # tiny block: amax / 6 < 2^-6 -> the floor byte 0x08, x = w * 64
    w = torch.tensor([[0.05, 0.01, -0.003, 0.002] + [0.0] * 12])
    q, s = ops.quantize(w)
    assert s.tolist() == [[0x08]]
    assert codes_of(w) == [5, 1, 8, 0] + [0] * 12        # 3.2 -> 3, .64 -> .5, -.192 -> -0, .128 -> 0
    # huge block: scale clamps at 448 (byte 0x7E), x = 1e4 / 448 = 22.3 saturates at 6
    _, s = ops.quantize(torch.full((1, 16), 1e4))
    assert s.tolist() == [[0x7E]]
    assert codes_of(torch.full((1, 16), 1e4)) == [7] * 16
    # amax / 6 = 1.0625, the tie between e4m3 1.0 and 1.125 -> even mantissa: 1.0; x = 6.375 -> 6
    w = torch.tensor([[6.375] + [0.0] * 15])
    q, s = ops.quantize(w)
    assert s.tolist() == [[0x38]] and codes_of(w)[0] == 7
    for fn in (nvfp4_ref.quantize_ref, ops.quantize):           # the reference agrees on the whole table
        assert fn(torch.tensor([[6.0, 0.25, 0.75, 1.25] + [0.0] * 12]))[1].tolist() == [[0x38]]


def old_rule_blocks() -> tuple[torch.Tensor, torch.Tensor]:
    """Packed blocks another quantizer could have written: subnormal and zero scales (floor 2^-16),
    codes whose block max is below 6 at a scale above the floor, -0 codes, random codes."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (40, 64), generator=g, dtype=torch.uint8)
    codes[:, 0] = 3                                                      # max code below 6 somewhere
    scale = torch.randint(0, 0x7E, (40, 4), generator=g, dtype=torch.uint8)
    scale[0] = torch.tensor([0, 1, 2, 7], dtype=torch.uint8)              # zero and subnormal scales
    codes[1] = 8                                                          # a row of -0
    return nvfp4_ref.pack_codes(codes), scale


def test_zero_delta_gives_the_stored_bytes():
    """Whatever quantizer wrote a file, delta = 0 is the stored weight bit for bit (issue 12)."""
    w = torch.randn(64, 256) * 0.02                                      # Qwen3-sized: at the 2^-6 floor
    for q, s in (ops.quantize(w), old_rule_blocks()):
        for dd in (torch.float32, torch.bfloat16):
            zero = torch.zeros(q.shape[0], q.shape[1] * 2, dtype=dd)
            for d in (zero, -zero):
                q2, s2 = ops.requantize_delta(q, s, d)
                assert_bits(q2, q)
                assert_bits(s2, s)
                assert_bits(ops.fake_quantize_delta(q, s, d, torch.float32), ops.dequantize(q, s))
                qr, sr = nvfp4_ref.requantize_delta_ref(q, s, d)
                assert_bits(qr, q)
                assert_bits(sr, s)


def test_delta_keeps_the_scale_until_the_block_outgrows_it():
    q, s = ops.quantize(torch.randn(32, 128) * 0.02)
    base = ops.dequantize(q, s)
    small = torch.randn(32, 128) * 1e-3
    q2, s2 = ops.requantize_delta(q, s, small)
    amax = (base + small).reshape(32, 8, 16).abs().amax(-1)
    fits = amax <= 6 * nvfp4_ref.e4m3_to_float(s)
    assert fits.float().mean() > 0.5
    assert torch.equal(s2[fits], s[fits])                                # frozen while it fits
    grown = ~fits       # torchao's scale of the new max, which is never below the stored one
    assert grown.any()
    assert torch.equal(s2[grown], nvfp4_ref.scale_from_amax(amax[grown]))
    assert bool((nvfp4_ref.e4m3_to_float(s2) >= nvfp4_ref.e4m3_to_float(s)).all())
    # only elements that moved (or share a block whose scale changed) may change their code
    moved = (small != 0) | (s2 != s).repeat_interleave(16, dim=1)
    assert torch.equal(nvfp4_ref.unpack_codes(q2)[~moved], nvfp4_ref.unpack_codes(q)[~moved])
    big = torch.zeros(32, 128)
    big[:, 0] = -1.0                                                     # one element per row outgrows
    q3, s3 = ops.requantize_delta(q, s, big)
    assert bool((s3[:, 0] > s[:, 0]).all()) and torch.equal(s3[:, 1:], s[:, 1:])
    assert torch.equal(q3[:, 8:], q[:, 8:])                              # other blocks: same bytes


# ---------------------------------------------------------------- linear
@pytest.mark.parametrize("m", [1, 3, 8, 33])
def test_linear_fp32(m):
    w = torch.randn(200, 320)
    q, s = ops.quantize(w)
    x = torch.randn(m, 320)
    y = ops.linear(x, q, s)
    ref = x @ nvfp4_ref.dequantize_ref(q, s).T
    assert y.dtype == torch.float32 and y.shape == (m, 200)
    assert ((y - ref).norm() / ref.norm()).item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_half_and_batch_shape(dtype):
    q, s = ops.quantize(torch.randn(64, 128))
    x = torch.randn(2, 5, 128).to(dtype)
    y = ops.linear(x, q, s)
    assert y.shape == (2, 5, 64) and y.dtype == dtype
    ref = x.float() @ nvfp4_ref.dequantize_ref(q, s).T
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
    qr, sr = nvfp4_ref.quantize_ref(w)
    assert_bits(q, qr)
    assert_bits(s, sr)
    assert_bits(torch.ops.nvfp4.dequantize(q, s, torch.bfloat16), nvfp4_ref.dequantize_ref(q, s, torch.bfloat16))
    assert_bits(torch.ops.nvfp4.fake_quantize(w), nvfp4_ref.fake_quantize_ref(w))
    d = torch.randn(32, 64) * 0.01
    assert_bits(torch.ops.nvfp4.fake_quantize_delta(q, s, d, torch.float32), nvfp4_ref.fake_quantize_delta_ref(q, s, d))
    q2, s2 = torch.ops.nvfp4.requantize_delta(q, s, d)
    assert_bits(q2, nvfp4_ref.requantize_delta_ref(q, s, d)[0])
    x = torch.randn(2, 64)
    assert torch.allclose(torch.ops.nvfp4.linear(x, q, s), x @ nvfp4_ref.dequantize_ref(q, s).T, rtol=1e-5, atol=1e-5)
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
    torch.library.opcheck(torch.ops.nvfp4.requantize_delta.default, (q, s, w), test_utils=tests)
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
