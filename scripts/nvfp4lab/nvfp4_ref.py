"""NVFP4 reference numerics in plain PyTorch (the spec the compiled kernels must match bit for bit).

Format (original-system.md §2), per row of a weight [N, K], blocks of 16 along K:
  code   = sign bit 8 | magnitude index 0..7, magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}
  packed = element 2j in the low nibble, 2j+1 in the high nibble of byte j  -> uint8 [N, K/2]
  scale  = one float8_e4m3fn byte per block                                   -> uint8 [N, K/16]
  value  = codebook[code] * float(scale); there is no global scale.

Quantizing is torchao's `NVFP4Tensor.to_nvfp4` without a per-tensor scale, the producer of the
user's file: scale = e4m3(clamp(amax / 6, 2^-6, 448)) (2^-6 = finfo(float8_e4m3fn).tiny, rounded
to nearest even), x = w / scale in fp32, codes = x rounded half to even onto the codebook (so
0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4; beyond 6 -> 6), the sign
bit copied from the float (-0.0 and -0.1 -> code 8).

Training updates a stored block with `requantize_delta_ref` (the ModelOpt-style frozen scale):
  u = dequantize(block) + delta; the stored scale is kept while the block still fits it
  (max|u| <= 6 * scale), and then an element whose delta is 0 keeps its stored code, so a zero
  delta gives back the stored codes and scale bit for bit, whoever quantized the file;
  a block that outgrew its scale gets torchao's scale for its new max (never smaller than the
  stored one) and all its codes are rounded again.
"""
import torch

BLOCK = 16
CODEBOOK = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                         -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32)
# Midpoints between neighbouring magnitudes. Round half to even: a tie goes to the even code,
# i.e. up at .75, 1.75, 3.5 (codes 1->2, 3->4, 5->6) and down at .25, 1.25, 2.5, 5.
MIDPOINTS_TIE_DOWN = torch.tensor([0.25, 1.25, 2.5, 5.0], dtype=torch.float32)
MIDPOINTS_TIE_UP = torch.tensor([0.75, 1.75, 3.5], dtype=torch.float32)
SCALE_MIN = 2.0 ** -6     # torchao: torch.finfo(torch.float8_e4m3fn).tiny
SCALE_MAX = 448.0


class NVFP4Error(ValueError):
    """Input that cannot be quantized (bad shape, dtype, NaN/Inf)."""


def check_weight(w: torch.Tensor, name: str = "weight") -> None:
    if w.dim() != 2:
        raise NVFP4Error(f"{name}: NVFP4 needs a 2-D [out, in] tensor, got shape {tuple(w.shape)}")
    if w.shape[1] % BLOCK != 0:
        raise NVFP4Error(f"{name}: in_features {w.shape[1]} is not a multiple of {BLOCK}")
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise NVFP4Error(f"{name}: dtype {w.dtype} is not float32/float16/bfloat16")
    if not bool(torch.isfinite(w).all()):
        raise NVFP4Error(f"{name}: contains NaN or Inf")


def check_packed(qdata: torch.Tensor, scale: torch.Tensor, name: str = "weight") -> None:
    if qdata.dtype != torch.uint8 or scale.dtype != torch.uint8:
        raise NVFP4Error(f"{name}: qdata/scale must be uint8, got {qdata.dtype}/{scale.dtype}")
    if qdata.dim() != 2 or scale.dim() != 2 or qdata.shape[0] != scale.shape[0] \
            or qdata.shape[1] * 2 != scale.shape[1] * BLOCK:
        raise NVFP4Error(f"{name}: qdata {tuple(qdata.shape)} and scale {tuple(scale.shape)} "
                         f"do not describe one [N, K] weight (need [N, K/2] and [N, K/16])")


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """fp32 amax per block -> e4m3 scale bytes (torchao: clamp to [2^-6, 448], round to nearest even)."""
    s = torch.clamp(amax / 6.0, SCALE_MIN, SCALE_MAX).to(torch.float8_e4m3fn)
    return s.view(torch.uint8)


def e4m3_to_float(scale: torch.Tensor) -> torch.Tensor:
    return scale.view(torch.float8_e4m3fn).to(torch.float32)


def fp4_codes(x: torch.Tensor) -> torch.Tensor:
    """x (= w / scale, fp32) -> 4-bit codes uint8: round half to even, saturate at 6, sign bit kept."""
    a = x.abs().unsqueeze(-1)
    mag = (a > MIDPOINTS_TIE_DOWN.to(x.device)).sum(-1) + (a >= MIDPOINTS_TIE_UP.to(x.device)).sum(-1)
    return (mag.to(torch.uint8) | (torch.signbit(x).to(torch.uint8) << 3))


def pack_codes(code: torch.Tensor) -> torch.Tensor:
    """codes uint8 [N, K] -> packed uint8 [N, K/2] (element 2j in the low nibble)."""
    return (code[:, 0::2] | (code[:, 1::2] << 4)).contiguous()


def quantize_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (qdata uint8 [N, K/2], scale uint8 [N, K/16]), exactly torchao's to_nvfp4."""
    check_weight(w)
    n, k = w.shape
    blocks = w.to(torch.float32).reshape(n, k // BLOCK, BLOCK)
    scale = scale_from_amax(blocks.abs().amax(dim=-1))
    x = blocks / e4m3_to_float(scale).unsqueeze(-1)
    return pack_codes(fp4_codes(x).reshape(n, k)), scale.contiguous()


def unpack_codes(qdata: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K/2] -> codes uint8 [N, K] (low nibble first)."""
    lo = qdata & 0x0F
    hi = qdata >> 4
    return torch.stack([lo, hi], dim=-1).reshape(qdata.shape[0], qdata.shape[1] * 2)


def dequantize_ref(qdata: torch.Tensor, scale: torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(qdata [N, K/2], scale [N, K/16]) -> [N, K] in `dtype` (computed in fp32, then cast)."""
    check_packed(qdata, scale)
    codes = unpack_codes(qdata).long()
    vals = CODEBOOK.to(qdata.device)[codes]
    n, k = vals.shape
    vals = vals.reshape(n, k // BLOCK, BLOCK) * e4m3_to_float(scale).unsqueeze(-1)
    return vals.reshape(n, k).to(dtype)


def fake_quantize_ref(w: torch.Tensor) -> torch.Tensor:
    """dequantize(quantize(w)) in w's dtype."""
    q, s = quantize_ref(w)
    return dequantize_ref(q, s, w.dtype)


def requantize_delta_ref(qdata: torch.Tensor, scale: torch.Tensor,
                         delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored block plus a training delta, as NVFP4 again (frozen scale; see the module doc)."""
    check_packed(qdata, scale)
    n, k = qdata.shape[0], qdata.shape[1] * 2
    d = delta.to(torch.float32).reshape(n, k // BLOCK, BLOCK)
    u = dequantize_ref(qdata, scale).reshape(n, k // BLOCK, BLOCK) + d
    amax = u.abs().amax(dim=-1)
    fits = amax <= 6.0 * e4m3_to_float(scale)       # NaN never fits: its block becomes NaN
    new_scale = torch.where(fits, scale, scale_from_amax(amax))
    codes = fp4_codes(u / e4m3_to_float(new_scale).unsqueeze(-1))
    # Same scale: an element whose delta is 0 keeps its stored code (-0, zero scales included).
    keep = (d == 0) & (new_scale == scale).unsqueeze(-1)
    codes = torch.where(keep, unpack_codes(qdata).reshape(n, k // BLOCK, BLOCK), codes)
    return pack_codes(codes.reshape(n, k)), new_scale.contiguous()


def fake_quantize_delta_ref(qdata: torch.Tensor, scale: torch.Tensor, delta: torch.Tensor,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The trainer's forward weight: dequantize(requantize_delta(qdata, scale, delta)) in dtype."""
    q, s = requantize_delta_ref(qdata, scale, delta)
    return dequantize_ref(q, s, dtype)
