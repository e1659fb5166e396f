"""NVFP4 reference numerics in plain PyTorch (the spec the compiled kernels must match bit for bit).

Format (original-system.md §2), per row of a weight [N, K], blocks of 16 along K:
  code   = sign bit 8 | magnitude index 0..7, magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}
  packed = element 2j in the low nibble, 2j+1 in the high nibble of byte j  -> uint8 [N, K/2]
  scale  = float8_e4m3fn(clamp(amax/6, 2^-16, 448)), stored as raw bytes     -> uint8 [N, K/16]
  value  = codebook[code] * float(scale); there is no global scale.
Quantizing: x = w / (scale + 1e-12), clamped to [-6, 6]; |x| >= threshold t_i takes code i+1 for
thresholds 0.25 .75 1.25 1.75 2.5 3.5 5; the sign bit is set when x < 0 (so -0.0 -> +0, -0.1 -> -0).
"""
import torch

BLOCK = 16
CODEBOOK = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                         -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=torch.float32)
THRESHOLDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float32)
SCALE_MIN = 2.0 ** -16
SCALE_MAX = 448.0
EPS = 1e-12


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
    """fp32 amax per block -> e4m3 scale as uint8 bytes (round to nearest even, as torch's cast)."""
    s = torch.clamp(amax / 6.0, SCALE_MIN, SCALE_MAX).to(torch.float8_e4m3fn)
    return s.view(torch.uint8)


def e4m3_to_float(scale: torch.Tensor) -> torch.Tensor:
    return scale.view(torch.float8_e4m3fn).to(torch.float32)


def quantize_ref(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (qdata uint8 [N, K/2], scale uint8 [N, K/16])."""
    check_weight(w)
    n, k = w.shape
    blocks = w.to(torch.float32).reshape(n, k // BLOCK, BLOCK)
    scale = scale_from_amax(blocks.abs().amax(dim=-1))
    x = blocks / (e4m3_to_float(scale).unsqueeze(-1) + EPS)
    x = x.clamp(-6.0, 6.0)
    mag = (x.abs().unsqueeze(-1) >= THRESHOLDS.to(x.device)).sum(-1).to(torch.uint8)
    code = (mag | ((x < 0).to(torch.uint8) << 3)).reshape(n, k)
    qdata = code[:, 0::2] | (code[:, 1::2] << 4)
    return qdata.contiguous(), scale.contiguous()


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
    """dequantize(quantize(w)) in w's dtype: the forward value of quantization-aware training."""
    q, s = quantize_ref(w)
    return dequantize_ref(q, s, w.dtype)
