"""The compiled NVFP4 ops (cuda/: CPU + CUDA kernels), bit-exact with nvfp4_ref.py.

torch.ops.nvfp4.{quantize, dequantize, fake_quantize, fake_quantize_delta, linear} are registered by
importing the extension; this module adds their fake (meta) kernels, so they trace under
torch.compile and capture in CUDA graphs, and plain functions with input checks:

  quantize(w [N, K])                     -> (qdata uint8 [N, K/2], scale uint8 [N, K/16] e4m3 bytes)
  dequantize(qdata, scale, dtype)        -> [N, K] dtype
  fake_quantize(w)                       -> dequantize(quantize(w)) in w's dtype (fused)
  requantize_delta(qdata, scale, delta)  -> (qdata', scale'): the stored weight plus delta as NVFP4 again,
                                            the stored scale frozen while the block fits it (nvfp4_ref)
  fake_quantize_delta(qdata, scale, delta, dtype)
                                         -> dequantize(requantize_delta(qdata, scale, delta)) in dtype (fused)
  linear(x [..., K], qdata, scale)       -> x @ dequantize(qdata, scale).T  [..., N] in x's dtype
"""
import torch

from .nvfp4_ref import NVFP4Error, check_packed, check_weight

try:
    from . import _nvfp4_C  # noqa: F401  (registers torch.ops.nvfp4.*)
except ImportError as e:
    raise ImportError("NVFP4 extension not built: run `make build`") from e

_ops = torch.ops.nvfp4


# ---- fake kernels: output shapes/dtypes only (no data) ----
@torch.library.register_fake("nvfp4::quantize")
def _quantize_fake(w):
    n, k = w.shape
    return w.new_empty((n, k // 2), dtype=torch.uint8), w.new_empty((n, k // 16), dtype=torch.uint8)


@torch.library.register_fake("nvfp4::dequantize")
def _dequantize_fake(qdata, scale, dtype):
    return qdata.new_empty((qdata.shape[0], qdata.shape[1] * 2), dtype=dtype)


@torch.library.register_fake("nvfp4::fake_quantize")
def _fake_quantize_fake(w):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


@torch.library.register_fake("nvfp4::fake_quantize_delta")
def _fake_quantize_delta_fake(qdata, scale, delta, dtype):
    return qdata.new_empty((qdata.shape[0], qdata.shape[1] * 2), dtype=dtype)


@torch.library.register_fake("nvfp4::requantize_delta")
def _requantize_delta_fake(qdata, scale, delta):
    return torch.empty_like(qdata), torch.empty_like(scale)


@torch.library.register_fake("nvfp4::linear")
def _linear_fake(x, qdata, scale):
    return x.new_empty((x.shape[0], qdata.shape[0]))


@torch.library.register_fake("nvfp4::_linear_cfg")
def _linear_cfg_fake(x, qdata, scale, rows, threads):
    return x.new_empty((x.shape[0], qdata.shape[0]))


@torch.library.register_fake("nvfp4::decode_attention")
def _decode_attention_fake(q, k, v, mask, scale):
    return q.new_empty(q.shape)


# ---- plain functions ----
def quantize(w: torch.Tensor, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float32/float16/bfloat16 -> (qdata [N, K/2], scale [N, K/16]), both uint8.
    check=True also rejects NaN/Inf (one device sync); pass False inside CUDA graphs / compiled code."""
    if check:
        check_weight(w)
    return _ops.quantize(w)


def dequantize(qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    check_packed(qdata, scale)
    return _ops.dequantize(qdata, scale, dtype)


def _check_weight_meta(w: torch.Tensor, name: str = "weight") -> None:
    """check_weight without the NaN/Inf scan (no device sync): for the hot training path."""
    if w.dim() != 2 or w.shape[1] % 16 != 0 or w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        check_weight(w, name)  # raises NVFP4Error with the precise message


def fake_quantize(w: torch.Tensor) -> torch.Tensor:
    _check_weight_meta(w)
    return _ops.fake_quantize(w)


def fake_quantize_delta(qdata: torch.Tensor, scale: torch.Tensor, delta: torch.Tensor,
                        dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The trainer's forward weight: dequantize(requantize_delta(qdata, scale, delta)) in dtype.
    Zero delta gives the stored weight exactly. No NaN/Inf scan (hot path): a NaN in delta makes its
    block NaN, an Inf saturates."""
    check_packed(qdata, scale)
    return _ops.fake_quantize_delta(qdata, scale, delta, dtype)


def requantize_delta(qdata: torch.Tensor, scale: torch.Tensor,
                     delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed codes and scales fake_quantize_delta computes with (what export writes)."""
    check_packed(qdata, scale)
    return _ops.requantize_delta(qdata, scale, delta)


def linear(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] in x's dtype (fp32 accumulation); W stays packed on CUDA for <= 8 rows."""
    check_packed(qdata, scale)
    k = qdata.shape[1] * 2
    if x.shape[-1] != k:
        raise NVFP4Error(f"linear: x has {x.shape[-1]} features, the weight expects {k}")
    lead = x.shape[:-1]
    y = _ops.linear(x.reshape(-1, k), qdata, scale)
    return y.reshape(*lead, qdata.shape[0])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """One query a row over a grouped KV cache: q [B, Hq, D], k/v [B, Hkv, L, D], mask [B or 1, L]
    additive (-inf: not attended; such columns are never read on CUDA) -> [B, Hq, D] in q's dtype.
    CUDA: decode_attention.cu; CPU: the same math in fp32 through ATen (the reference)."""
    return _ops.decode_attention(q, k, v, mask, float(scale))


__all__ = ["NVFP4Error", "quantize", "dequantize", "fake_quantize", "fake_quantize_delta", "requantize_delta",
           "linear", "decode_attention"]
