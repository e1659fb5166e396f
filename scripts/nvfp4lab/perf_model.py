"""Bandwidth/compute model of decode, prefill and one training step (issue 16, doc/BENCHMARKS.md).

From a model's config.json and the way this project stores and trains it, count the bytes every
phase of the work moves and the FLOPs it does, then price them on a machine:

    seconds = sum over phases of max(bytes / bandwidth, flops / bf16 peak)     the roofline
            + kernels x the GPU-side cost of one kernel                         what it misses
    eager work (no CUDA graph): max(that, kernels x host time per kernel), since the host issues
    kernels while the GPU runs earlier ones.

The layout counted (nvfp4_ref.py, dat.py, model.py, trainer.py):
- every projection and lm_head is NVFP4: a 4-bit code per weight plus one e4m3 scale byte per
  16-weight block = 0.5625 bytes a weight; lm_head is its own pair even where config.json ties it;
- the embedding and the norms are dense (fp16 in the file, bf16 on the GPU);
- training keeps a bf16 delta per weight (fp32 for the 1-D norms), rebuilds each projection's
  bf16 weight from packed + delta in forward and again in backward (QATLinearFn saves only x), and
  steps a bf16 AdamW per decoder layer inside backward after clipping that layer's gradients
  (StepInBackward); the gradients live one layer at a time but are still written and read once.

Pure Python (no torch), so it runs in CI. Kernel counts and the per-kernel costs are inputs: the
counts are what `bench.py --profile` measured, the costs are fitted once on the H100 run of
doc/BENCHMARKS.md (calibrate_overheads) and then checked against the H200 run of issue 16 (check).
"""
import json
from dataclasses import asdict, dataclass, field

NVFP4_BYTES = 0.5 + 1 / 16   # per weight: a 4-bit code + 1/16 of the block's e4m3 scale byte
BF16_BYTES = 2
FP32_BYTES = 4
GEMV_MAX_ROWS = 8            # model.GEMV_MAX_ROWS (model.py imports torch; a test keeps them equal)
# One fake-quantized weight rebuilt (ops.fake_quantize_delta): read packed + bf16 delta, write bf16.
REBUILD_BYTES = NVFP4_BYTES + BF16_BYTES + BF16_BYTES
# Per optimizer element: clip_grad_norm_ reads the gradient for the norm and scales it in place
# (read + write, it always multiplies); AdamW reads param, grad, exp_avg, exp_avg_sq and writes
# param, exp_avg, exp_avg_sq. Both in the tensor's own dtype.
CLIP_ACCESSES = 3
ADAMW_ACCESSES = 7
# --adam-state-bits 8 (adam8.py): per value one byte a state plus one fp32 scale per 256 values.
# Its step reads and writes the value (bf16), reads the gradient, reads and writes both codes
# and their scales.
ADAM8_BLOCK = 256            # adam8.BLOCK (adam8.py imports torch; a test keeps them equal)
ADAM8_STATE_BYTES = 2 * (1 + 4 / ADAM8_BLOCK)
ADAM8_STEP_BYTES = 2 * BF16_BYTES + BF16_BYTES + 2 * ADAM8_STATE_BYTES
# Per logit of the loss (batch_loss / transformers' loss): lm_head writes bf16 (2), .float()
# reads 2 writes 4, log_softmax reads 4 writes 4; backward: its grad reads 4 + 4 writes 4, the
# cast back reads 4 writes 2.
CE_BYTES_PER_LOGIT = 2 + 6 + 8 + 12 + 6


# ---------------------------------------------------------------- the model's shape

@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        heads = cfg["num_attention_heads"]
        return cls(hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                   intermediate=cfg["intermediate_size"], q_heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   vocab=cfg["vocab_size"])

    @property
    def q_width(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim


# Qwen3-4B-Instruct-2507's config.json (../shared/reference/...; a test compares them), so the
# CLI and CI work where that file is absent.
QWEN3_4B = Shape(hidden=2560, layers=36, intermediate=9728, q_heads=32, kv_heads=8, head_dim=128,
                 vocab=151936)


def load_shape(path: str) -> Shape:
    """config.json (or the model dir holding it) -> Shape."""
    if not path.endswith(".json"):
        path = path.rstrip("/") + "/config.json"
    with open(path, encoding="utf-8") as f:
        return Shape.from_config(json.load(f))


def layer_linears(s: Shape) -> list[tuple[str, int, int]]:
    """(name, out N, in K) of one decoder layer's NVFP4 projections, weight [N, K]."""
    h, q, kv, i = s.hidden, s.q_width, s.kv_width, s.intermediate
    return [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q),
            ("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]


def layer_weights(s: Shape) -> int:
    return sum(n * k for _, n, k in layer_linears(s))


def layer_io_width(s: Shape) -> int:
    """Activation values a layer's projections read (K) and write (N), per token."""
    return sum(n + k for _, n, k in layer_linears(s))


def head_weights(s: Shape) -> int:
    return s.vocab * s.hidden      # lm_head, NVFP4 (convert.py always writes its own pair)


def embed_weights(s: Shape) -> int:
    return s.vocab * s.hidden      # embed_tokens, dense


def norm_weights(s: Shape) -> int:
    """input + post-attention norms (hidden), q_norm + k_norm (head_dim), final norm."""
    return s.layers * (2 * s.hidden + 2 * s.head_dim) + s.hidden


def nvfp4_weights(s: Shape) -> int:
    return s.layers * layer_weights(s) + head_weights(s)


def all_weights(s: Shape) -> int:
    return nvfp4_weights(s) + embed_weights(s) + norm_weights(s)


def elementwise_bytes_per_token_layer(s: Shape) -> int:
    """Bytes the non-matmul ops of one decoder layer's forward move per token (estimate).

    Counted as transformers' eager Qwen3 runs them, writes only, then doubled (each tensor
    written is read about once by the next op): an RMSNorm upcasts to fp32, squares, scales,
    casts back and multiplies by its weight (4 + 4 + 4 + 2 + 2 = 16 bytes a value), two on the
    hidden state and the q/k norms on q and k; rotary writes 4 bf16 tensors (rotate_half's cat,
    two products, the sum) on q and k; SwiGLU writes silu(gate) and the product; two residual
    adds. The least certain term of the model: it is what fused kernels would remove.
    """
    writes = (2 * 16 * s.hidden                    # input / post-attention RMSNorm
              + (16 + 8) * (s.q_width + s.kv_width)  # q_norm/k_norm, rotary on q and k
              + 2 * BF16_BYTES * s.intermediate   # silu(gate), silu * up
              + 2 * BF16_BYTES * s.hidden)        # two residual adds
    return 2 * writes


def kv_cache_bytes(s: Shape, tokens: int) -> int:
    """K and V of `tokens` positions in every layer, bf16."""
    return s.layers * 2 * s.kv_width * tokens * BF16_BYTES


# ---------------------------------------------------------------- work: phases of bytes and FLOPs

@dataclass
class Phase:
    name: str
    bytes: float
    flops: float = 0.0


@dataclass
class Work:
    name: str
    phases: list
    kernels: int | None   # launches per unit of work (None: not measured; the roofline only)
    mode: str             # "graph" (replayed CUDA graph), "eager-infer", "eager-train"
    tokens: int           # tokens the work processes (decode step: 1)

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.phases)

    @property
    def flops(self) -> float:
        return sum(p.flops for p in self.phases)


def decode_step(s: Shape, context_tokens: int = 256, weights: str = "nvfp4",
                kernels: int | None = None) -> Work:
    """One batch-1 decode step (replayed CUDA graph). context_tokens: KV positions attention
    reads; the runners' static cache is read whole, so it is the cache's capacity (256 in bench)."""
    weight_bytes = NVFP4_BYTES if weights == "nvfp4" else BF16_BYTES
    io = s.layers * layer_io_width(s) + s.hidden + s.vocab
    return Work(f"decode step ({weights}, {context_tokens} KV positions)", [
        Phase("weights (GEMV)", nvfp4_weights(s) * weight_bytes + io * BF16_BYTES,
              2 * nvfp4_weights(s)),
        Phase("attention over the KV cache", kv_cache_bytes(s, context_tokens),
              s.layers * 4 * s.q_width * context_tokens),
        Phase("elementwise, embedding row, norm weights",
              s.layers * elementwise_bytes_per_token_layer(s)
              + (s.hidden + norm_weights(s)) * BF16_BYTES),
    ], kernels, "graph", 1)


def prefill(s: Shape, tokens: int, weights: str = "nvfp4", kernels: int | None = None) -> Work:
    """One eager no-grad forward of `tokens` positions, logits of the last one only
    (bench.prefill_tok_s). Ours: more than GEMV_MAX_ROWS rows go through dequantize -> bf16 ->
    cuBLAS, so each projection's bf16 copy is written and read again."""
    lw = s.layers * layer_weights(s)
    phases = []
    if weights == "nvfp4" and tokens > GEMV_MAX_ROWS:
        phases.append(Phase("dequantize to bf16 (cuBLAS path)", lw * (NVFP4_BYTES + BF16_BYTES)))
        gemm_weight_bytes = BF16_BYTES
    else:
        gemm_weight_bytes = NVFP4_BYTES if weights == "nvfp4" else BF16_BYTES
    head_weight_bytes = NVFP4_BYTES if weights == "nvfp4" else BF16_BYTES   # 1 row: the GEMV
    phases += [
        Phase("matmuls",
              lw * gemm_weight_bytes + tokens * s.layers * layer_io_width(s) * BF16_BYTES,
              2 * tokens * lw),
        Phase("attention (causal)",
              tokens * s.layers * (2 * s.q_width + 2 * s.kv_width) * BF16_BYTES,
              2 * s.layers * tokens * tokens * s.q_width),
        Phase("elementwise", tokens * s.layers * elementwise_bytes_per_token_layer(s)),
        Phase("lm_head, last position", head_weights(s) * head_weight_bytes, 2 * head_weights(s)),
    ]
    return Work(f"prefill {tokens} tokens ({weights})", phases, kernels, "eager-infer", tokens)


def train_step(s: Shape, rows: int = 16, seq_len: int = 64, head_rows: int | None = None,
               checkpoint: bool = True, recipe: str = "ours", kernels: int | None = None,
               state_bits: int = 16) -> Work:
    """One full-parameter training step on rows x seq_len tokens (bench.our_train_step /
    peer_train_step). head_rows: positions with a label, the only ones lm_head sees in ours
    (batch_loss); bench masks the first half of every row. The peer (plain transformers: fp32
    master weights, bf16 autocast, fused fp32 AdamW, global clip) computes every position's
    logits and never checkpoints."""
    tokens = rows * seq_len
    peer = recipe == "peer"
    if peer:
        head_rows, checkpoint = tokens, False
    elif head_rows is None:
        head_rows = tokens // 2
    lw, hw = s.layers * layer_weights(s), head_weights(s)
    ew, nw = embed_weights(s), norm_weights(s)
    # Decoder-layer forwards per step: checkpointing runs the layers' forward again in backward;
    # embedding and lm_head sit outside the checkpointed layers.
    fwd = 2 if checkpoint else 1
    passes = fwd + 2   # forward(s) + backward's two matmuls (grad input, grad weight)
    phases = []
    if peer:
        # autocast casts every fp32 projection weight to bf16 once per step (backward reuses it);
        # the bf16 weight gradient is cast back to the fp32 .grad.
        phases.append(Phase("weight casts (autocast, fp32 <-> bf16)",
                            (lw + hw) * 2 * (FP32_BYTES + BF16_BYTES)))
    else:
        # QATLinearFn rebuilds each weight in every forward and once more in backward.
        phases.append(Phase("weight rebuild (fake_quantize_delta)", (lw * (fwd + 1) + hw * 2)
                            * REBUILD_BYTES))
    weight_reads = lw * (fwd + 1) + hw * 2              # bf16 W in forward(s) and in grad input
    grad_writes = lw + hw                               # bf16 weight gradient
    act_io = (tokens * s.layers * layer_io_width(s) * passes
              + head_rows * (s.vocab + s.hidden) * 3) * BF16_BYTES
    phases += [
        Phase("matmuls", (weight_reads + grad_writes) * BF16_BYTES + act_io,
              2 * tokens * lw * passes + 2 * head_rows * hw * 3),
        # Backward of attention counted as twice its forward, as for the matmuls.
        Phase("attention (causal)", tokens * s.layers * (2 * s.q_width + 2 * s.kv_width)
              * BF16_BYTES * passes, 2 * s.layers * rows * seq_len ** 2 * s.q_width * passes),
        # Backward of the elementwise ops: read the saved input and the incoming grad, write
        # the grad: counted as twice the forward.
        Phase("elementwise", tokens * s.layers * elementwise_bytes_per_token_layer(s) * passes),
        Phase("logits and cross-entropy", head_rows * s.vocab * CE_BYTES_PER_LOGIT),
    ]
    if peer:
        # fp32 embedding (not autocast): a dense fp32 gradient; norms fp32.
        phases.append(Phase("embedding and norms", (ew + nw) * FP32_BYTES
                            + tokens * s.hidden * FP32_BYTES))
        opt_bytes = all_weights(s) * (CLIP_ACCESSES + ADAMW_ACCESSES) * FP32_BYTES
    else:
        # AddDelta: W = base + delta in forward (read base and delta, write W); the embedding's
        # backward writes a dense [vocab, hidden] gradient. Norms: fp32 deltas on bf16 bases.
        phases.append(Phase("embedding and norms (base + delta)",
                            ew * 4 * BF16_BYTES + nw * (3 * BF16_BYTES + 2 * FP32_BYTES)
                            + tokens * s.hidden * BF16_BYTES))
        opt_bytes = (((lw + hw + ew) * BF16_BYTES + nw * FP32_BYTES)
                     * (CLIP_ACCESSES + ADAMW_ACCESSES))
        if state_bits == 8:   # the norms' few fp32 values are counted as bf16 ones there
            opt_bytes = (lw + hw + ew + nw) * (CLIP_ACCESSES * BF16_BYTES + ADAM8_STEP_BYTES)
    phases.append(Phase("optimizer (clip + AdamW)", opt_bytes))
    what = (f"train step {rows}x{seq_len} ({recipe}, "
            f"{'layer checkpointing' if checkpoint else 'no checkpointing'}"
            f"{', 8-bit AdamW states' if state_bits == 8 and not peer else ''})")
    return Work(what, phases, kernels, "eager-train", tokens)


def train_resident_bytes(s: Shape) -> dict:
    """What a training run holds between steps (ours): the bf16 deltas, their AdamW states, the
    packed base and the dense base (bf16 on the GPU)."""
    deltas = (nvfp4_weights(s) + embed_weights(s)) * BF16_BYTES + norm_weights(s) * FP32_BYTES
    values = nvfp4_weights(s) + embed_weights(s) + norm_weights(s)
    return {"deltas": deltas, "adamw_states": 2 * deltas,
            "adamw_states_8bit": values * ADAM8_STATE_BYTES,   # --adam-state-bits 8
            "packed_base": nvfp4_weights(s) * NVFP4_BYTES,
            "dense_base": (embed_weights(s) + norm_weights(s)) * BF16_BYTES}


# ---------------------------------------------------------------- machines and what they cost

@dataclass(frozen=True)
class Machine:
    name: str
    bytes_per_s: float          # memory bandwidth, the vendor's figure
    bf16_flops_per_s: float     # dense bf16 tensor-core peak (no sparsity)
    source: str
    copy_bytes_per_s: float | None = None   # measured device copy (read + write), if we have one


MACHINES = {
    "h100": Machine("H100 SXM 80GB HBM3", 3.35e12, 989e12,
                    "NVIDIA H100 datasheet (SXM): 3.35 TB/s, bf16 1,979 TFLOP/s with sparsity = 989 "
                    "dense; the GPU of the 2026-11-24 runs in doc/BENCHMARKS.md",
                    copy_bytes_per_s=2428e9),
    "h200": Machine("H200 141GB HBM3e", 4.8e12, 989e12,
                    "NVIDIA H200 datasheet: 4.8 TB/s, bf16 1,979 TFLOP/s with sparsity = 989 dense",
                    copy_bytes_per_s=2763e9),
    "gb10": Machine("GB10 (DGX Spark) 128GB LPDDR5X unified", 273e9, 125e12,
                    "NVIDIA DGX Spark spec: 273 GB/s, 1 PFLOP FP4 with sparsity. NVIDIA publishes no "
                    "bf16 figure: 125 TFLOP/s = 1,000 / 2 (dense) / 4 (FP4 -> bf16, Blackwell's "
                    "ratio) is an assumption; measured on GB10 (NVIDIA forum, CUTLASS): FP8 188 of "
                    "250 TFLOP/s dense, so ~94 bf16 may be nearer"),
}


@dataclass(frozen=True)
class Overheads:
    graph_kernel_s: float         # GPU-side cost of one kernel in a replayed CUDA graph
    eager_infer_kernel_s: float   # host time per kernel of an eager no-grad forward
    eager_train_kernel_s: float   # host time per kernel of an eager training step
    source: str


# Measured on the H100 (doc/BENCHMARKS.md, "runners' CUDA-graph decoder, optimizer in backward,
# layer checkpointing"): the figures the per-kernel costs are fitted on.
H100_DECODE_STEP_S = 6.28e-3        # one replayed decode step
DECODE_STEP_KERNELS = 2220          # kernels of one decode step (eager profile of the same step)
FUSED_DECODE_STEP_KERNELS = 511     # --compile-step --fused-gemv (bench.py --profile, 2026-11-30)
H100_EAGER_DECODE_TOK_S = 23.7      # transformers.generate eager, ours
TRAIN_STEP_KERNELS = 9029           # kernels of one train step without checkpointing
H100_TRAIN_STEP_S = 0.291           # that step, no checkpointing
H100_TRAIN_GPU_BUSY_S = 0.171       # GPU busy time inside it (profile)
BENCH_PROMPT_TOKENS = 12            # bench's prompt: "你是誰" in the chat template (about)
BENCH_DECODE_TOKENS = 64
BENCH_CACHE_TOKENS = 256            # StaticDecoder capacity: attention reads all of it


def prefill_kernels(s: Shape) -> int:
    """Estimate: a decode step's kernels plus one dequantize per projection (rows > 8)."""
    return DECODE_STEP_KERNELS + len(layer_linears(s)) * s.layers


def train_kernels(s: Shape, checkpoint: bool) -> int:
    """Measured without checkpointing; with it, estimated as one more forward of the layers."""
    return TRAIN_STEP_KERNELS + (prefill_kernels(s) if checkpoint else 0)


def roofline_s(bytes_: float, flops: float, m: Machine) -> float:
    """The larger of the two lower bounds: moving the bytes, doing the FLOPs."""
    return max(bytes_ / m.bytes_per_s, flops / m.bf16_flops_per_s)


def work_roofline_s(w: Work, m: Machine) -> float:
    """Summed phase by phase: each phase is its own kernels, one memory-bound, the next
    compute-bound, so they do not overlap."""
    return sum(roofline_s(p.bytes, p.flops, m) for p in w.phases)


def host_kernel_s(w: Work, oh: Overheads) -> float:
    return {"graph": 0.0, "eager-infer": oh.eager_infer_kernel_s,
            "eager-train": oh.eager_train_kernel_s}[w.mode]


@dataclass
class Timing:
    """Seconds of some work on one machine."""
    gpu_s: float        # roofline + kernels x GPU-side cost
    host_s: float       # kernels x host time per kernel (0 for replayed graphs)
    roofline_s: float

    @property
    def model_s(self) -> float:
        return max(self.gpu_s, self.host_s)

    @property
    def bound_by(self) -> str:
        return "host" if self.host_s > self.gpu_s else "gpu"


def work_timing(w: Work, m: Machine, oh: Overheads) -> Timing:
    kernels = w.kernels or 0
    roof = work_roofline_s(w, m)
    return Timing(roof + kernels * oh.graph_kernel_s, kernels * host_kernel_s(w, oh), roof)


def predict_s(w: Work, m: Machine, oh: Overheads) -> float:
    """Roofline + kernels x GPU-side kernel cost; eager work also at least its host time."""
    return work_timing(w, m, oh).model_s


def calibrate_overheads(s: Shape = QWEN3_4B) -> Overheads:
    """Per-kernel costs from the H100 measurements (a different machine from the H200 check)."""
    h100 = MACHINES["h100"]
    step = decode_step(s, BENCH_CACHE_TOKENS)
    graph = (H100_DECODE_STEP_S - work_roofline_s(step, h100)) / DECODE_STEP_KERNELS
    return Overheads(
        graph_kernel_s=graph,
        eager_infer_kernel_s=1 / H100_EAGER_DECODE_TOK_S / DECODE_STEP_KERNELS,
        eager_train_kernel_s=H100_TRAIN_STEP_S / TRAIN_STEP_KERNELS,
        source="H100 (doc/BENCHMARKS.md): replayed decode step 6.28 ms minus its roofline "
               "over 2,220 kernels; eager generate 23.7 tok/s over 2,220 kernels; train step "
               "0.291 s (host-bound: GPU busy 171 ms) over 9,029 kernels")


# ---------------------------------------------------------------- the H200 check

@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    who: str            # "ours" or "peer" (plain transformers in the same process)
    h200_measured: float
    unit: str           # "tok/s" or "s"


# `python scripts/bench.py --static` on an H200, one run (the table of issue 16).
H200_MEASURED = [
    Figure("decode", "decode batch 1, static cache + CUDA graph (64 tokens incl. prefill)", "ours",
           146, "tok/s"),
    Figure("prefill", "prefill 512 tokens", "ours", 1.13e4, "tok/s"),
    Figure("train_ckpt", "train step 16x64, layer checkpointing (default)", "ours", 0.34, "s"),
    Figure("train", "train step 16x64, no checkpointing", "ours", 0.283, "s"),
    Figure("peer_decode", "peer decode, static cache + torch.compile (bf16)", "peer", 149, "tok/s"),
    Figure("peer_prefill", "peer prefill 512 tokens (bf16)", "peer", 1.58e4, "tok/s"),
    Figure("peer_train", "peer train step 16x64 (fp32 master, bf16 autocast)", "peer", 0.208, "s"),
    # a later run (eighth session, doc/BENCHMARKS.md): the compiled + fused step, and the prompt's
    # prefill replayed as a CUDA graph (its padded bucket) instead of run eagerly
    Figure("decode_fused", "decode batch 1, compiled step + fused GEMVs + prefill graph (64 tokens "
           "incl. prefill)", "ours", 355, "tok/s"),
    # twenty-third session (doc/BENCHMARKS.md): a 512-token prompt through the runners' decoder,
    # its bucket's prefill replayed as a CUDA graph (bench.decoder_prefill_tok_s)
    Figure("prefill_graph", "prefill 512 tokens, runners' decoder (bucket replayed as a CUDA "
           "graph)", "ours", 2.18e4, "tok/s"),
]


def figure_tokens(f: Figure) -> int | None:
    """Tokens behind a tok/s figure (None for a figure in seconds)."""
    return {"decode": BENCH_DECODE_TOKENS, "peer_decode": BENCH_DECODE_TOKENS,
            "decode_fused": BENCH_DECODE_TOKENS, "prefill": 512, "peer_prefill": 512,
            "prefill_graph": 512}.get(f.key)


def figure_timing(key: str, s: Shape, m: Machine, oh: Overheads) -> Timing:
    if key in ("decode", "peer_decode", "decode_fused"):
        weights = "bf16" if key == "peer_decode" else "nvfp4"
        kernels = {"decode": DECODE_STEP_KERNELS, "decode_fused": FUSED_DECODE_STEP_KERNELS}.get(key)
        step = work_timing(decode_step(s, BENCH_CACHE_TOKENS, weights, kernels), m, oh)
        pre_work = prefill(s, BENCH_PROMPT_TOKENS, weights, prefill_kernels(s) if kernels else None)
        if key == "decode_fused":      # the same kernels, replayed: no host time per kernel
            pre_work.mode = "graph"
        pre = work_timing(pre_work, m, oh)
        # bench's greedy(): one prefill of the prompt, then 63 replayed steps. Counted as
        # GPU time: the steps are most of it on both machines.
        steps = BENCH_DECODE_TOKENS - 1
        return Timing(pre.model_s + steps * step.model_s, 0.0,
                      pre.roofline_s + steps * step.roofline_s)
    if key in ("prefill", "prefill_graph"):
        w = prefill(s, 512, "nvfp4", prefill_kernels(s))
        if key == "prefill_graph":     # the same kernels, replayed: no host time per kernel
            w.mode = "graph"
    elif key == "peer_prefill":
        w = prefill(s, 512, "bf16")
    elif key == "peer_train":
        w = train_step(s, recipe="peer")
    else:
        ckpt = key == "train_ckpt"
        w = train_step(s, checkpoint=ckpt, kernels=train_kernels(s, ckpt))
    return work_timing(w, m, oh)


def gpu_efficiency_h100(s: Shape = QWEN3_4B, oh: Overheads | None = None) -> float:
    """Model GPU time / measured GPU busy time of the H100 train step (its profile). The H200's
    train step and prefill are host-bound, so their efficiency says how well the host constants
    carried over, not how close the kernels come to the roofline; on the GB10, where the same
    work is GPU-bound, this one is what matters."""
    oh = oh or calibrate_overheads(s)
    w = train_step(s, checkpoint=False, kernels=TRAIN_STEP_KERNELS)
    return work_timing(w, MACHINES["h100"], oh).gpu_s / H100_TRAIN_GPU_BUSY_S


@dataclass
class CheckRow:
    key: str
    label: str
    who: str
    unit: str
    h200_measured: float
    h200_model: float
    h200_roofline: float
    h200_bound_by: str
    efficiency: float           # measured / model speed on the H200 (1 = exact, < 1 = slower)
    gb10_model: float
    gb10_bound_by: str
    gb10_efficiency: float      # the efficiency the GB10 expectation uses (see check)
    gb10_expected: float
    gb10_expected_other: float | None  # peer only: the other end of its range
    gb10_roofline: float        # the ceiling: every phase at full bandwidth or peak, no overheads


def check(s: Shape = QWEN3_4B, oh: Overheads | None = None,
          gb10: Machine | None = None) -> list[CheckRow]:
    """Every H200 figure next to the model's H200 prediction, then the GB10's.

    GB10 expected = the GB10 model at the H200's efficiency where the same bound (GPU or host)
    limits both machines. Where the H200 was host-bound and the GB10 is GPU-bound (train step,
    prefill), the GPU part takes the H100 profile's GPU efficiency instead (gpu_efficiency_h100).
    The peer has no kernel counts, so its model is the bare roofline and its H200 gap is mostly
    overhead: its GB10 figure is a range, from that gap kept as fixed seconds (fast end) to the
    gap scaled with the roofline (slow end).
    """
    oh = oh or calibrate_overheads(s)
    h200, gb10 = MACHINES["h200"], gb10 or MACHINES["gb10"]
    gpu_eff = gpu_efficiency_h100(s, oh)
    out = []
    for f in H200_MEASURED:
        tokens = figure_tokens(f)
        unit = (lambda sec: tokens / sec) if tokens else (lambda sec: sec)   # noqa: E731
        measured_s = tokens / f.h200_measured if tokens else f.h200_measured
        h, g = figure_timing(f.key, s, h200, oh), figure_timing(f.key, s, gb10, oh)
        eff = h.model_s / measured_s
        other = None
        if f.who == "peer":
            used = eff
            expected_s = g.roofline_s + (measured_s - h.roofline_s)
            other = unit(g.roofline_s / eff)
        elif h.bound_by == g.bound_by:
            used = eff
            expected_s = g.model_s / eff
        else:
            used = gpu_eff
            expected_s = max(g.gpu_s / gpu_eff, g.host_s / eff)
        out.append(CheckRow(f.key, f.label, f.who, f.unit, f.h200_measured, unit(h.model_s),
                            unit(h.roofline_s), h.bound_by, eff, unit(g.model_s), g.bound_by,
                            used, unit(expected_s), other, unit(g.roofline_s)))
    return out


# ---------------------------------------------------------------- results as data

def work_report(w: Work, m: Machine, oh: Overheads) -> dict:
    t = work_timing(w, m, oh)
    return {
        "what": w.name, "mode": w.mode, "kernels": w.kernels, "tokens": w.tokens,
        "bytes": w.bytes, "flops": w.flops,
        "phases": [{"name": p.name, "bytes": p.bytes, "flops": p.flops,
                    "roofline_s": roofline_s(p.bytes, p.flops, m),
                    "bound": "memory" if p.bytes / m.bytes_per_s >= p.flops / m.bf16_flops_per_s
                    else "compute"} for p in w.phases],
        "roofline_s": t.roofline_s,
        "gpu_s": t.gpu_s,
        "host_s": t.host_s,
        "predicted_s": t.model_s,
        "bound_by": t.bound_by,
        "tokens_per_s": w.tokens / t.model_s,
        "roofline_tokens_per_s": w.tokens / t.roofline_s,
    }


ASSUMPTIONS = [
    "measured: the H200 figures (issue 16, bench.py --static, one run); the H100 figures the "
    "per-kernel costs are fitted on (doc/BENCHMARKS.md); kernel counts 2,220 per decode step and "
    "9,029 per train step without checkpointing (H100 profiles); everything else is predicted",
    "bytes and FLOPs are counted from the shape, not measured; the elementwise term (norms, rotary, "
    "SwiGLU, residuals as transformers runs them eagerly) is an estimate",
    "kernels of a prefill = a decode step's + one dequantize per projection; with layer "
    "checkpointing a train step adds one such forward: estimates, not profiled",
    "the per-kernel costs (GPU-side in a CUDA graph, host-side when eager) fitted on the H100 "
    "are taken to hold on the H200 and the GB10",
    "GB10 bf16 peak 125 TFLOP/s is derived from the FP4 figure, not published by NVIDIA",
    "train_step_adam8 (--adam-state-bits 8) is counted, not measured: its optimizer bytes from "
    "adam8.py's layout, one kernel a tensor (11 a layer) added to the fused AdamW step's count",
    "the roofline uses the vendors' bandwidth; measured device copies reach 72% of it (H100) and "
    "58% (H200), which the efficiencies absorb",
]


@dataclass
class Settings:
    context_tokens: int = BENCH_CACHE_TOKENS
    prefill_tokens: int = 512
    rows: int = 16
    seq_len: int = 64
    head_rows: int | None = None
    decode_kernels: int = DECODE_STEP_KERNELS
    train_kernels: int = TRAIN_STEP_KERNELS
    machines: list = field(default_factory=lambda: ["h200", "gb10"])


def report(s: Shape, st: Settings, oh: Overheads | None = None,
           machines: dict | None = None) -> dict:
    """Everything the CLI prints: per machine the four workloads, and the H200 check."""
    oh = oh or calibrate_overheads(s)
    machines = machines or MACHINES
    works = {
        "decode_step": decode_step(s, st.context_tokens, "nvfp4", st.decode_kernels),
        "prefill": prefill(s, st.prefill_tokens, "nvfp4", prefill_kernels(s)),
        "train_step_checkpoint": train_step(s, st.rows, st.seq_len, st.head_rows, True,
                                            kernels=st.train_kernels + prefill_kernels(s)),
        "train_step": train_step(s, st.rows, st.seq_len, st.head_rows, False,
                                 kernels=st.train_kernels),
        # one adam8 kernel a tensor (11 a decoder layer) instead of fused AdamW's per bucket
        "train_step_adam8": train_step(s, st.rows, st.seq_len, st.head_rows, False,
                                       kernels=st.train_kernels + 11 * s.layers, state_bits=8),
    }
    return {
        "shape": asdict(s),
        "weights_bytes": {"nvfp4": nvfp4_weights(s) * NVFP4_BYTES,
                          "dense_bf16": (embed_weights(s) + norm_weights(s)) * BF16_BYTES},
        "train_resident_bytes": train_resident_bytes(s),
        "overheads": asdict(oh),
        "machines": {k: asdict(machines[k]) for k in st.machines},
        "predictions": {k: {name: work_report(w, machines[k], oh) for name, w in works.items()}
                        for k in st.machines},
        # The measured figures are for the 4B shape: another shape gets no check.
        "h200_check": ([asdict(r) for r in check(s, oh, machines.get("gb10"))]
                       if s == QWEN3_4B else None),
        "gpu_efficiency_h100": gpu_efficiency_h100(s, oh),
        "assumptions": ASSUMPTIONS,
    }


def check_table(rows: list[CheckRow]) -> str:
    """The check as the Markdown table of doc/BENCHMARKS.md."""
    def fmt(x, unit):
        return f"{x:.3g} s" if unit == "s" else f"{x:,.0f} tok/s"

    def expected(r):
        if r.gb10_expected_other is None:
            return fmt(r.gb10_expected, r.unit)
        lo, hi = sorted((r.gb10_expected, r.gb10_expected_other))
        return f"{fmt(lo, r.unit).split()[0]}-{fmt(hi, r.unit)}"
    out = ["| figure | H200 measured | H200 model (bound by) | efficiency: measured / model "
           "| H200 roofline | GB10 model (bound by) | GB10 expected (efficiency used) "
           "| GB10 roofline ceiling |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.label} | {fmt(r.h200_measured, r.unit)} "
                   f"| {fmt(r.h200_model, r.unit)} ({r.h200_bound_by}) | {r.efficiency:.2f} "
                   f"| {fmt(r.h200_roofline, r.unit)} "
                   f"| {fmt(r.gb10_model, r.unit)} ({r.gb10_bound_by}) "
                   f"| {expected(r)} ({r.gb10_efficiency:.2f}) | {fmt(r.gb10_roofline, r.unit)} |")
    return "\n".join(out) + "\n"
