"""transformers' own causal LM (Qwen3 first, Llama-family too) running on NVFP4 `.dat` weights.

Only two things are ours: `NVFP4Linear`, which replaces each nn.Linear stored as a qdata+scale pair
and keeps it packed (4B model: ~2.5 GB instead of 8), and the trainable form of every weight:

    projection / lm_head:  W = requantize(qdata, scale, delta), dequantized       (STE backward)
                           (the stored scale frozen while a block fits it: delta = 0 is the
                           stored weight bit for bit, whoever quantized the file; nvfp4_ref.py)
    dense (norms, embed):  W = base + delta
where the NVFP4 base (or stored dense base) is frozen and `delta` (zeros at load) holds the
training update. Why a delta: with lr 1e-5 a bf16 master weight loses every update (w + 1e-5
rounds back to w); a zero-based delta keeps them, costs 2 bytes/weight like a bf16 master, makes
"back to the initial weights" a `zero_()`, and an untouched tensor exports byte for byte.
"""
import json
import os
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from transformers import AutoConfig, AutoModelForCausalLM

from . import ops
from .dat import DatFile, export_dat, nvfp4_prefix

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
GEMV_MAX_ROWS = 8  # decode-sized inputs go through the W4A16 kernel; larger ones through cuBLAS


class ModelLoadError(ValueError):
    """Config and `.dat` disagree (the message names the tensor)."""


def fake_quantized_weight(qdata, scale, u: torch.Tensor, dtype) -> torch.Tensor:
    """The NVFP4 weight a training forward sees: the stored base plus the delta u, requantized
    with its stored scale frozen (ops.fake_quantize_delta); or, with no stored base (qdata None:
    the proxy, trained from scratch), the float weight u itself fake-quantized."""
    if qdata is None:
        return ops.fake_quantize(u).to(dtype)
    return ops.fake_quantize_delta(qdata, scale, u, dtype)


class QATLinearFn(torch.autograd.Function):
    """y = x @ fake_quantized_weight(qdata, scale, u).T with the straight-through estimator: the
    fake quantization counts as the identity in backward, so u gets the gradient the weight
    would get. The project's one STE: NVFP4Linear's training forward (u = delta) and the
    proxy's quantization-aware training (qdata = scale = None, u = the float weight) use it.

    The weight is rebuilt in backward, never saved. Saving only x (not the [N, K] weight) is what
    keeps full-parameter QAT memory near the size of the trainable state: a saved bf16 weight
    per layer would cost another 2 bytes per parameter.
    """

    @staticmethod
    def forward(ctx, x, qdata, scale, u):
        w = fake_quantized_weight(qdata, scale, u, x.dtype)   # [N, K]
        # On the CPU memory is not the limit but time is: rebuilding the weight costs ~10% of a
        # SmolLM2 step on 2 cores, so there the weight is kept. On CUDA it is rebuilt (above).
        ctx.cpu_weight = None if x.is_cuda else w
        ctx.save_for_backward(x, qdata, scale, u)
        return x @ w.t()

    @staticmethod
    def backward(ctx, gy):
        x, qdata, scale, u = ctx.saved_tensors
        w = ctx.cpu_weight
        if w is None or w.dtype != gy.dtype:
            w = fake_quantized_weight(qdata, scale, u, gy.dtype)
        ctx.cpu_weight = None
        gx = gy @ w if ctx.needs_input_grad[0] else None
        # Straight-through: d fake_quantize(u) / du = 1, so u gets the weight gradient.
        gu = (gy.reshape(-1, gy.shape[-1]).t() @ x.reshape(-1, x.shape[-1])).to(u.dtype)
        return gx, None, None, gu


class NVFP4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qdata", torch.empty(out_features, in_features // 2,
                                                  dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.empty(out_features, in_features // 16,
                                                  dtype=torch.uint8, device=device))
        self.delta = None        # nn.Parameter [out, in] once made trainable
        self.use_delta = True    # False: compute with the frozen base (the model before training)
        self.cache_weight = False  # set by cached_weights(): reuse the unpacked weight
        self._cache = None         # (key, weight [out, in]) while cache_weight is on
        self.fused = None          # (FusedRows, first row, end row, leader?): fuse.fuse_siblings

    def make_trainable(self, dtype=torch.bfloat16):
        self.delta = nn.Parameter(torch.zeros(self.out_features, self.in_features, dtype=dtype,
                                              device=self.qdata.device))

    def cached(self, dtype) -> torch.Tensor:
        """The weight forward would compute, built once per (base/trained, dtype, delta version).

        Why: generation runs one forward per new token, and unpacking every weight each time
        (SmolLM2 on 2 CPU cores: ~1.4 s per token for the trained form) costs more than the
        matmuls. The key holds the delta's version counter, so an optimizer step or zero_() in
        between (both in-place) makes the next call rebuild it.
        """
        trained = self.delta is not None and self.use_delta
        key = (trained, dtype) + ((id(self.delta), self.delta._version) if trained else ())
        if self._cache is None or self._cache[0] != key:
            self._cache = None   # free the old weight before building the new one
            w = (fake_quantized_weight(self.qdata, self.scale, self.delta, dtype) if trained
                 else ops.dequantize(self.qdata, self.scale, dtype))
            self._cache = (key, w)
        return self._cache[1]

    def forward(self, x):
        trained = self.delta is not None and self.use_delta
        # On CUDA only the trained form is cached: the base form reads the packed weight through
        # the GEMV kernel there, whose sums differ from a dense matmul's (runners use it).
        if self.cache_weight and not torch.is_grad_enabled() and (trained or not x.is_cuda):
            # Same expressions as the uncached branches below, so the results are bit-identical.
            w = self.cached(x.dtype)
            return x @ w.t() if trained else F.linear(x, w)
        if trained:
            return QATLinearFn.apply(x, self.qdata, self.scale, self.delta)
        rows = x.numel() // x.shape[-1]
        if self.fused and rows <= GEMV_MAX_ROWS:   # on the CPU too: one dequantize per group
            return self.fused_linear(x)
        if x.is_cuda and rows <= GEMV_MAX_ROWS:
            return ops.linear(x, self.qdata, self.scale)
        return F.linear(x, ops.dequantize(self.qdata, self.scale, x.dtype))

    def fused_linear(self, x):
        """ops.linear through the siblings' stacked weight (fuse.py): the leader computes every
        sibling's rows at once; a sibling given the same input takes its columns of that."""
        group, start, end, leader = self.fused
        if leader:
            group.x, group.y = x, ops.linear(x, group.qdata, group.scale)
        elif group.x is not x:
            return ops.linear(x, self.qdata, self.scale)
        return group.y[..., start:end]

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, nvfp4"


class AddDelta(nn.Module):
    """Parametrization of a dense weight: weight = base + delta (delta is the trained tensor)."""

    def __init__(self, base: torch.Tensor):
        super().__init__()
        self.register_buffer("base", base, persistent=False)
        self.use_delta = True
        self.cache_weight = False  # set by cached_weights(), as NVFP4Linear's
        self._cache = None

    def forward(self, delta):
        if not self.use_delta:
            return self.base
        if not (self.cache_weight and not torch.is_grad_enabled()):
            return self.base + delta.to(self.base.dtype)
        # The embedding (SmolLM2: 28 M values) is otherwise re-added on every generated token.
        key = (id(delta), delta._version)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.base + delta.to(self.base.dtype))
        return self._cache[1]

    def right_inverse(self, value):
        # Called once by register_parametrization with the current weight: start at delta = 0.
        return torch.zeros_like(value)


def load_config(model_dir: str):
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (the model dir needs config.json)")
    try:
        json.load(open(path, encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    return AutoConfig.from_pretrained(model_dir)


def module_of(model: nn.Module, param_key: str) -> tuple[nn.Module, str]:
    """`model.layers.0.mlp.up_proj.weight` -> (that Linear module, "weight")."""
    path, _, leaf = param_key.rpartition(".")
    return model.get_submodule(path), leaf


def load_model(dat: DatFile, model_dir: str, device="cpu", dtype=torch.bfloat16):
    """Build transformers' model from config.json on the meta device, then fill it from `dat`.

    No full-size dense copy is ever built: NVFP4 linears stay packed, dense tensors are copied
    tensor by tensor from the memory-mapped file to `device`.
    """
    config = load_config(model_dir)
    if torch.device(device).type == "cuda":
        # cuDNN attention builds an execution plan for every new sequence length, and every decode
        # step is one: measured on H100 (torch 2.11) ~75 ms per step against ~4 ms with the
        # flash / memory-efficient kernels, which need no plan.
        torch.backends.cuda.enable_cudnn_sdp(False)
    stored = {nvfp4_prefix(k) for k in dat.by_key if nvfp4_prefix(k)}
    # The original file stores lm_head as its own NVFP4 pair although config says tied: untie.
    if dat.stored_prefix("lm_head.weight") or "lm_head.weight" in dat:
        config.tie_word_embeddings = False
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    device = torch.device(device)

    params = dict(model.named_parameters())
    # `a.b.weight` may be stored as `a.b.weight.qdata` or, as the original also reads, `a.b.qdata`.
    nvfp4 = {prefix: k for k in params if (prefix := dat.stored_prefix(k))}
    ignored = sorted(stored - set(nvfp4))
    for prefix, key in sorted(nvfp4.items()):
        parent, leaf = module_of(model, key)
        if not isinstance(parent, nn.Linear) or leaf != "weight" or parent.bias is not None:
            raise ModelLoadError(f"{dat.path}: {prefix!r} is stored as NVFP4 but is not the weight "
                                 "of a bias-free nn.Linear")
        q, s = dat.nvfp4_pair(prefix)
        n, k = parent.out_features, parent.in_features
        if tuple(q.shape) != (n, k // 2) or tuple(s.shape) != (n, k // 16):
            raise ModelLoadError(f"{dat.path}: {prefix!r} qdata {tuple(q.shape)} / scale "
                                 f"{tuple(s.shape)} do not fit the config's [{n}, {k}] weight")
        lin = NVFP4Linear(k, n, device=device)
        lin.qdata.copy_(q)
        lin.scale.copy_(s)
        path, _, name = key.rpartition(".")[0].rpartition(".")
        setattr(model.get_submodule(path) if path else model, name, lin)

    dense = {n: p for n, p in model.named_parameters() if p.is_meta}
    missing = [n for n in dense if n not in dat]
    if missing:
        raise ModelLoadError(f"{dat.path}: missing tensor(s) the config needs: {missing[:5]}")
    ignored += [k for k in dat.by_key if nvfp4_prefix(k) is None and k not in dense]
    if ignored:
        # The original's loader skips tensors it does not use; so do we, saying so once. Export
        # copies them unchanged.
        print(f"warning: {dat.path}: {len(ignored)} tensor(s) not used by the {config.model_type} "
              f"of {model_dir}/config.json are ignored (kept unchanged in exports): "
              f"{', '.join(ignored[:4])}{' ...' if len(ignored) > 4 else ''}", file=sys.stderr)
    for name, p in dense.items():
        t = dat.tensor(name)
        if tuple(t.shape) != tuple(p.shape):
            raise ModelLoadError(f"{dat.path}: {name!r} has shape {tuple(t.shape)}, config needs "
                                 f"{tuple(p.shape)}")
        mod, leaf = module_of(model, name)
        setattr(mod, leaf, nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=False))
    if config.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) were built on meta: rebuild them with the
    # official constructor on the real device.
    for name, mod in list(model.named_modules()):
        if hasattr(mod, "inv_freq") and hasattr(mod, "config"):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf,
                    type(mod)(mod.config).to(device))
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                if t.is_meta]
    if leftover:
        raise ModelLoadError(f"{dat.path}: not filled from the file: {leftover[:5]}")
    model.eval()
    return model


@contextmanager
def cached_weights(model: nn.Module):
    """Inside: gradient-free forwards reuse each unpacked weight (and each base+delta of the dense
    tensors) instead of rebuilding it per forward; for generation and scoring. The caches are
    dropped on exit, so nothing stays resident between probe rounds.

    On the CPU always. On CUDA only while the unpacked weights fit CUDA_CACHE_BYTES, and only the
    trained form (NVFP4Linear.forward): there a training forward requantizes base + delta for
    every linear on every generated token (SmolLM2: the bulk of a probe round's and of
    --self-kl-rows' time), while holding every unpacked 4B weight would raise the GPU peak by
    ~8 GB. The cached expression is the training forward's own (x @ w.T), so answers are
    bit-identical either way.
    """
    if next(model.parameters()).is_cuda and unpacked_bytes(model) > CUDA_CACHE_BYTES:
        yield
        return
    mods = [m for m in model.modules() if isinstance(m, (NVFP4Linear, AddDelta))]
    for m in mods:
        m.cache_weight = True
    try:
        yield
    finally:
        for m in mods:
            m.cache_weight, m._cache = False, None


CUDA_CACHE_BYTES = 2 << 30     # SmolLM2-135M: 0.27 GB, cached; Qwen3-4B: 8 GB, not


def unpacked_bytes(model: nn.Module) -> int:
    """bf16 bytes of every NVFP4 weight unpacked (what cached_weights would hold at most)."""
    return sum(2 * m.in_features * m.out_features for m in model.modules()
               if isinstance(m, NVFP4Linear))


def make_trainable(model: nn.Module, delta_dtype=torch.bfloat16) -> list[tuple[str, nn.Parameter]]:
    """Give every weight a zero delta; returns (name, delta) for the optimizer.

    1-D tensors (norms) get float32 deltas: they are tiny and their updates are the smallest.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for mod in model.modules():
        if isinstance(mod, NVFP4Linear):
            mod.make_trainable(delta_dtype)
    dense = [(n, p) for n, p in model.named_parameters() if not n.endswith(".delta")]
    for name, p in dense:
        mod, leaf = module_of(model, name)
        if parametrize.is_parametrized(mod, leaf):
            continue  # tied weights: one parametrization serves both names
        base = p.detach()
        setattr(mod, leaf, nn.Parameter(base.clone(), requires_grad=True))
        parametrize.register_parametrization(mod, leaf, AddDelta(base), unsafe=True)
        delta = getattr(mod.parametrizations, leaf).original
        delta.data = delta.data.to(torch.float32 if base.dim() == 1 else delta_dtype)
    for mod in model.modules():
        if isinstance(mod, NVFP4Linear):
            mod.delta.requires_grad_(True)
    share_parametrized_classes(model)
    return trainable_deltas(model)


def share_parametrized_classes(model) -> None:
    """Give every parametrized module of one original class and one set of parametrized names the
    same class. torch.nn.utils.parametrize makes a new subclass per module (`ParametrizedQwen3-
    RMSNorm` once per norm); the subclasses differ only in identity, since each parametrized name
    is a property that reads the instance's own `parametrizations`. One class per kind lets
    compiled layers share a graph (trainer.compile_layers). Nothing here removes a
    parametrization, which would delete the shared property for every module."""
    shared = {}
    for mod in model.modules():
        if parametrize.is_parametrized(mod):
            kind = (type(mod).__bases__[0], tuple(sorted(mod.parametrizations.keys())))
            mod.__class__ = shared.setdefault(kind, type(mod))


def trainable_deltas(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(stored key, delta) for every trainable tensor, keyed by its name in the `.dat`."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, NVFP4Linear) and mod.delta is not None:
            out.append((f"{name}.weight", mod.delta))
        if parametrize.is_parametrized(mod):
            for leaf, plist in mod.parametrizations.items():
                out.append((f"{name}.{leaf}", plist.original))
    return out


def set_use_delta(model: nn.Module, on: bool) -> None:
    """Switch between the trained weights and the frozen base (for KL targets and probes)."""
    for mod in model.modules():
        if isinstance(mod, (NVFP4Linear, AddDelta)):
            mod.use_delta = on


@contextmanager
def deltas_off(model: nn.Module):
    """`with deltas_off(model):` the frozen base inside, the trained weights again after (also on
    an exception)."""
    set_use_delta(model, False)
    try:
        yield model
    finally:
        set_use_delta(model, True)


@torch.no_grad()
def reset_deltas(model: nn.Module) -> None:
    """Back to the initial weights: every delta to zero."""
    for _, d in trainable_deltas(model):
        d.zero_()


@torch.no_grad()
def updated_tensors(model: nn.Module, dat: DatFile) -> dict[str, torch.Tensor]:
    """The `.dat` entries that training changed, in their stored layout.

    NVFP4 weights are written with the same frozen-scale requantization the training forward used
    (ops.requantize_delta), so the file holds exactly the codes and scales that were trained; a
    block whose delta is zero keeps its bytes. Tensors whose delta is all zero are left out, so
    the writer copies their bytes verbatim.
    """
    out = {}
    for key, delta in trainable_deltas(model):
        if not bool(delta.any()):
            continue
        prefix = dat.stored_prefix(key)
        if prefix is not None:
            q, s = dat.nvfp4_pair(prefix)
            q2, s2 = ops.requantize_delta(q.to(delta.device), s.to(delta.device), delta.detach())
            out[prefix + ".qdata"], out[prefix + ".scale"] = q2.cpu(), s2.cpu()
        else:
            e = dat.by_key[key]
            base = dat.tensor(key).to(delta.device, torch.float32)
            out[key] = (base + delta.float()).to(e.dtype).cpu()
    return out


def export_model(model: nn.Module, dat: DatFile, dst: str) -> list[str]:
    """Write the trained model as a new `.dat` in `dat`'s layout; returns the replaced keys."""
    new = updated_tensors(model, dat)
    export_dat(dat, dst, new)
    return sorted(new)
