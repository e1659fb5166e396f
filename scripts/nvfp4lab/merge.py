"""Seed soup: the elementwise median of several trained edits of one base `.dat`.

Each edit (a training run with its own seed) moves some stored NVFP4 codes. A code that only one
of three seeds moved is seed noise; a code that two or three moved the same way is what the
recipe teaches. So per element we take the median of the edits' effective changes
D_k = dequantize(edit_k) - dequantize(base) (fp32) and write base + median(D) with the same
frozen-scale requantization the trainer exports with (ops.requantize_delta):

  one of three moved             -> median 0   -> the base's code (and scale) bit for bit
  two or three moved the same way -> the smaller of the moves is kept
  +1 step, -1 step, unchanged    -> median 0   -> the base
  two edits (even K)             -> the mean of the two changes (torch.median would take the
                                    lower one, which is not a median of two)

Dense (non-NVFP4) tensors follow the same rule on their stored values. Tensors are merged one at
a time, in row chunks, so memory stays at a few copies of the largest tensor whatever K is.
"""
import torch

from . import ops
from .dat import DatFile

CHUNK = 1 << 24   # elements of one edit's chunk (x K edits, fp32): bounds the working memory


def median0(x: torch.Tensor) -> torch.Tensor:
    """x [K, ...] -> its median over dim 0: the middle value for odd K, the mean of the two
    middle values for even K."""
    k = x.shape[0]
    s = x.sort(dim=0).values
    if k % 2:
        return s[k // 2]
    return (s[k // 2 - 1] + s[k // 2]) / 2   # equal middle values come back exactly


def check_same_layout(base: DatFile, edit: DatFile) -> None:
    """An edit must have the base's keys, elemTypes and shapes (it was exported from it)."""
    for e in base.entries:
        o = edit.by_key.get(e.key)
        if o is None:
            raise ValueError(f"{edit.path}: key {e.key!r}: missing (the base {base.path} has it)")
        if o.elem_type != e.elem_type or o.shape != e.shape:
            raise ValueError(f"{edit.path}: key {e.key!r}: elemType {o.elem_type} shape {o.shape}, "
                             f"but the base {base.path} has elemType {e.elem_type} shape {e.shape}")
    extra = [k for k in edit.by_key if k not in base.by_key]
    if extra:
        raise ValueError(f"{edit.path}: key {extra[0]!r}: not in the base {base.path}")


def nvfp4_median_delta(base: DatFile, edits: list[DatFile], prefix: str) -> torch.Tensor:
    """median_k(dequantize(edit_k) - dequantize(base)) for one NVFP4 weight: fp32 [N, K]."""
    q0, s0 = base.nvfp4_pair(prefix)
    n, k = q0.shape[0], q0.shape[1] * 2
    d = torch.empty(n, k, dtype=torch.float32)
    rows = max(1, CHUNK // k)
    for r in range(0, n, rows):
        w0 = ops.dequantize(q0[r:r + rows], s0[r:r + rows])
        # Blocks of 16 lie along a row, so a row slice is a whole number of blocks.
        deltas = [ops.dequantize(q[r:r + rows], s[r:r + rows]) - w0
                  for q, s in (e.nvfp4_pair(prefix) for e in edits)]
        d[r:r + rows] = median0(torch.stack(deltas))
    return d


def dense_median(base: DatFile, edits: list[DatFile], key: str) -> torch.Tensor | None:
    """The merged dense tensor in its stored dtype, or None where it equals the base.

    base + median_k(edit_k - base) = median_k(edit_k) (the order of the changes is the order of
    the values), so the median is taken on the values: for odd K it is then one edit's stored
    value exactly, with no fp32 round trip through a difference."""
    b = base.tensor(key).reshape(-1)
    if b.dtype.is_floating_point:
        work = torch.float64 if b.dtype == torch.float64 else torch.float32
    else:   # integers/bools: no mean of two middle values; none in a model file we know of
        moved = [e.path for e in edits if not torch.equal(e.tensor(key), base.tensor(key))]
        if not moved:
            return None
        raise ValueError(f"{moved[0]}: key {key!r}: a changed {b.dtype} tensor; only float "
                         "tensors can be merged")
    out = torch.empty_like(b)
    for i in range(0, b.numel(), CHUNK):
        vals = torch.stack([e.tensor(key).reshape(-1)[i:i + CHUNK].to(work) for e in edits])
        out[i:i + CHUNK] = median0(vals).to(b.dtype)
    if torch.equal(out, b):   # median change 0 everywhere (-0 == +0: the same weight)
        return None
    return out.reshape(base.by_key[key].shape)


@torch.no_grad()
def median_merge(base: DatFile, edits: list[DatFile]) -> dict[str, torch.Tensor]:
    """The `.dat` entries the merge changes, in their stored layout (for export_dat).

    NVFP4 pairs: requantize_delta(base qdata, base scale, D) with D the elementwise median of the
    edits' effective changes; a weight whose D is all zero is left out (export_dat then copies
    its bytes), and within a written weight a zero-D element keeps the base's code. Dense
    tensors: the median of the edits' values, left out where it equals the base.
    """
    if len(edits) < 2:
        raise ValueError(f"a merge needs at least 2 edits, got {len(edits)}")
    for e in edits:
        check_same_layout(base, e)
    out = {}
    prefixes = base.nvfp4_prefixes()
    pair_keys = {p + suffix for p in prefixes for suffix in (".qdata", ".scale")}
    for prefix in prefixes:
        d = nvfp4_median_delta(base, edits, prefix)
        if not bool(d.any()):
            continue
        q2, s2 = ops.requantize_delta(*base.nvfp4_pair(prefix), d)
        out[prefix + ".qdata"], out[prefix + ".scale"] = q2, s2
    for e in base.entries:
        if e.key in pair_keys:
            continue
        t = dense_median(base, edits, e.key)
        if t is not None:
            out[e.key] = t
    return out


@torch.no_grad()
def changed_codes(base: DatFile, dat: DatFile) -> dict[str, int]:
    """Per NVFP4 weight of the base, how many of `dat`'s codes stand for another value than the
    base's. Values, not code bytes, as update_report counts: +0 and -0 (codes 0 and 8) are the
    same weight, and so is a code halved in a block whose scale doubled."""
    out = {}
    for prefix in base.nvfp4_prefixes():
        q0, s0 = base.nvfp4_pair(prefix)
        q, s = dat.nvfp4_pair(prefix)
        rows = max(1, CHUNK // (q0.shape[1] * 2))
        out[prefix] = sum(int((ops.dequantize(q[r:r + rows], s[r:r + rows])
                               != ops.dequantize(q0[r:r + rows], s0[r:r + rows])).sum())
                          for r in range(0, q0.shape[0], rows))
    return out


def nvfp4_elements(dat: DatFile) -> dict[str, int]:
    """Codes per NVFP4 weight (two per qdata byte)."""
    return {p: dat.by_key[p + ".qdata"].nbytes * 2 for p in dat.nvfp4_prefixes()}
