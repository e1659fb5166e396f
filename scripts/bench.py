"""Speed and memory of this tool vs plain transformers, measured in ONE process on ONE GPU.

    python scripts/bench.py [--model-dir DIR] [--work /tmp/bench] [--skip-stage]   # CUDA
    python scripts/bench.py --cpu                                                # proxy, CPU

GPU: builds a Qwen3-4B-shaped model with random weights (config from --model-dir), writes it as
an NVFP4 `.dat` through the converter, then times: `.dat` load, batch-1 greedy decode (ours vs
`transformers.generate` bf16 on the same dequantized weights), 512-token prefill, a suite-sized
batch of greedy answers (64 chats x 32 tokens), one
full-parameter training step at 16 x 64 (ours: NVFP4 QAT with bf16 deltas; peer: fp32 master +
bf16 autocast + fused AdamW) with peak memory, export, and `train.py` with the Stage G recipe end
to end. Prints a table last and writes it into doc/BENCHMARKS.md (and $OUT if set).
"""
import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from nvfp4lab import chat, ops, paths, trainer  # noqa: E402
from nvfp4lab.config import TrainConfig  # noqa: E402
from nvfp4lab.convert import conversion_plan, dat_entries, entry_count  # noqa: E402
from nvfp4lab.dat import read_dat, write_dat  # noqa: E402
from nvfp4lab.attention import decode_attention  # noqa: E402
from nvfp4lab.decode import StaticDecoder, round_up  # noqa: E402
from nvfp4lab.fuse import fuse_siblings  # noqa: E402
from nvfp4lab.generate import greedy_chats  # noqa: E402
from nvfp4lab.model import (export_model, load_config, load_model, make_trainable,  # noqa: E402
                            reset_deltas)

GiB = 2 ** 30


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=5, warmup=2) -> float:
    """Median seconds of fn() over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device) -> float:
    return torch.cuda.max_memory_allocated() / GiB if device.type == "cuda" else float("nan")


def write_random_dat(config, path: str, device, seed=0):
    """Random N(0, 0.02) projections, unit norms, quantized on `device`, streamed to disk."""
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in AutoModelForCausalLM.from_config(config).named_parameters()}
    shapes.setdefault("lm_head.weight", shapes["model.embed_tokens.weight"])

    def get(name):
        if name.endswith("norm.weight"):
            return torch.ones(shapes[name], device=device)
        return torch.randn(shapes[name], device=device, generator=g) * 0.02
    plan = conversion_plan(config)
    write_dat(path, dat_entries(plan, get, device=device), entry_count(plan))


def peer_model(config, dat, device):
    """Plain transformers bf16 model holding the dequantized weights (the comparison)."""
    cfg = type(config).from_dict({**config.to_dict(), "tie_word_embeddings": False})
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    sd = {}
    for name, _ in m.named_parameters():
        if name + ".qdata" in dat:
            q, s = dat.nvfp4_pair(name)
            sd[name] = ops.dequantize(q.to(device), s.to(device), torch.bfloat16)
        else:
            sd[name] = dat.tensor(name).to(device, torch.bfloat16)
    m.load_state_dict(sd)
    return m.eval()


def decode_tok_s(model, ids, new_tokens, device, static=False) -> float:
    """Greedy batch-1 decode; static=True: transformers' static cache, which compiles the
    forward (CUDA graphs) inside generate; the first (compiling) call is warm-up."""
    extra = {"cache_implementation": "static"} if static else {}

    def run():
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                       pad_token_id=0, temperature=None, top_p=None, top_k=None, **extra)
    return new_tokens / timed(run, device, repeat=3, warmup=2 if static else 1)


def print_profile(fn, device, what: str, row_limit=18) -> None:
    from torch.profiler import ProfilerActivity, profile as prof
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        fn()
        sync(device)
    events = [e for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in events) / 1e3
    print(f"  profile of {what}: {len(events)} GPU kernels/copies, {busy:.2f} ms of GPU time",
          flush=True)
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=row_limit), flush=True)


def kernel_count(fn, device) -> int:
    """GPU kernels one call of fn launches (torch.profiler; copies and memsets not counted).
    Run fn eagerly: a CUDA graph replays the same kernels, and the profiler may not see inside."""
    from torch.profiler import ProfilerActivity, profile as prof
    if device.type != "cuda":
        return 0
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        sync(device)
    return sum(1 for e in p.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset")))


def graph_decode(model, ids, new_tokens, device, use_graph=True, profile=False,
                 compile_step=False, fast_attention=False):
    """The runners' decoder (decode.StaticDecoder: static cache, one CUDA graph replay per token):
    (tok/s including prefill, the tokens, why it fell back to eager if it did, kernels per step).
    compile_step: the step's forward through torch.compile before capture; the compile happens
    in the warm-up run, outside the timed ones."""
    dec = StaticDecoder(model, use_graph=use_graph, compile_step=compile_step)
    dec.fast_attention = fast_attention
    ctx = ids[0].tolist()

    def run():
        dec.greedy(ctx, new_tokens, stops=[])
    # two warm-ups: the step is captured at the first call, the prompt's prefill at the second
    tok_s = new_tokens / timed(run, device, repeat=3, warmup=2)
    mode = "CUDA graph" if dec.graph is not None else f"eager ({dec.graph_note or 'no CUDA'})"
    if profile:   # what one decode step is made of (run outside the graph, so the kernels show one by one)
        # inside the attention the step was captured with (outside it a compiled step recompiles)
        with torch.no_grad(), decode_attention(model, fast_attention):
            print_profile(dec._step, device, "one decode step" + (" (compiled)" if compile_step
                                                                 else " (eager)"), row_limit=25)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(20):
                dec.graph.replay() if dec.graph is not None else dec._step()
            sync(device)
        print(f"  one decode step replayed: {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms",
              flush=True)
    tokens = dec.greedy(ctx, new_tokens, stops=[])[0]
    with torch.no_grad(), decode_attention(model, fast_attention):
        kernels = kernel_count(dec._step, device)
    return tok_s, tokens, mode, kernels


def compiled_decode(model, ids, new_tokens, device, what: str, reference: list[int],
                    profile=False):
    """graph_decode with the compiled step: (tok/s, tokens, kernels per step, seconds with the
    compile); prints where its tokens first differ from `reference`'s. profile: also the kernels
    one compiled step is made of (what the next fusion should remove)."""
    t0 = time.time()
    tok_s, tokens, mode, kernels = graph_decode(model, ids, new_tokens, device, profile=profile,
                                                compile_step=True)
    seconds = time.time() - t0
    torch._dynamo.reset()
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    print(f"  {what}: {mode}, {seconds:.0f} s with its compile; the same tokens as before: "
          f"{tokens == reference} (first difference at {first})", flush=True)
    return tok_s, tokens, kernels, seconds


def try_static_decode(model, ids, new_tokens, device) -> float:
    try:
        return decode_tok_s(model, ids, new_tokens, device, static=True)
    except Exception as e:  # report, don't lose the other figures
        print(f"  static-cache decode failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return float("nan")


def prefill_tok_s(model, n, device, vocab) -> float:
    ids = torch.randint(0, vocab, (1, n), device=device)

    def run():
        with torch.no_grad():
            model(ids, logits_to_keep=1)
    return n / timed(run, device)


def decoder_prefill_tok_s(model, n, device, vocab) -> float:
    """An n-token prompt's prefill as the runners do it (StaticDecoder._prefill: padded to its
    PREFILL_BUCKETS length, one CUDA graph replay from the bucket's second use on), the next
    token read back on the host included."""
    dec = StaticDecoder(model, capacity=round_up(n + 1, 256))
    ids = torch.randint(0, vocab, (n,)).tolist()

    def run():
        with torch.no_grad():
            dec._prefill(ids, 0)
    # the bucket is captured at its second use: two warm-ups, then replays only
    return n / timed(run, device, repeat=5, warmup=2)


def batched_greedy_s(model, tok, chats, new_tokens, device, ours: bool,
                     batch_size: int | None = None) -> float:
    """Seconds to answer `chats` greedily as one left-padded batch (or batches of `batch_size`),
    what a suite, a probe round or --self-kl-rows does: ours through generate.greedy_chats
    (BatchDecoder: static cache, one CUDA graph captured per call, as in a suite), the peer
    through transformers' generate."""
    if ours:
        def run():
            greedy_chats(model, tok, chats, new_tokens, batch_size or len(chats))
    else:
        enc = [chat.encode_chat(tok, c) for c in chats]
        width, pad = max(map(len, enc)), chat.pad_token_id(tok)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=device)
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=device)

        def run():
            model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, eos_token_id=None, pad_token_id=pad,
                           temperature=None, top_p=None, top_k=None)
    return timed(run, device, repeat=2, warmup=1)


def chat_batch(rows, tokens, vocab, device, seed):
    """rows x tokens random ids whose first half is masked as a chat prompt (labels -100) and
    whose second half is the answer trained on."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, tokens), generator=g).to(device)
    labels = ids.clone()
    labels[:, :tokens // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def batch_16x64(vocab, device, seed=0):
    return chat_batch(16, 64, vocab, device, seed)


def kl_batch_64x96(vocab, device, seed=1):
    """A keep-heavy step as the real recipes take it (the mix rows, the self-KL and mined rows of
    one step): 64 rows x 96 tokens, answers in the second half, every row kept by the KL."""
    return chat_batch(64, 96, vocab, device, seed), torch.ones(64, dtype=torch.bool, device=device)


def our_train_step(model, device, vocab, profile=False, kl_rows=True) -> dict:
    """train.py's step, eager, timed with layer checkpointing (on CUDA by default) and without:
    {recompute: (seconds, peak GiB)}; with kl_rows also the 64x96 KL batch with the head in one
    piece and in chunks: {("kl", positions a chunk, 0 = one piece): (seconds, peak GiB)}."""
    deltas = make_trainable(model, torch.bfloat16)
    model.train()
    # What train.py does: AdamW stepped layer by layer inside backward, clip 1.0 per layer.
    lrs = {"head": 1e-3, "embed": 1e-5, "norm": 1e-5, "blocks": 1e-5}
    stepper = trainer.StepInBackward(deltas, lrs, 0.0, 1.0)
    batch = batch_16x64(vocab, device)
    anchor = torch.zeros(16, dtype=torch.bool, device=device)
    chunk = trainer.head_chunk_positions(TrainConfig().head_chunk_mib, vocab)   # train.py's

    def step_with(st):
        def step():
            loss = trainer.batch_loss(model, batch, anchor, 0.0, chunk_positions=chunk)[0]
            loss.backward()
            st.flush()
        return step
    step = step_with(stepper)
    trace = None
    if profile and device.type == "cuda":
        def trace():
            memory_trace(model, deltas, stepper, batch, anchor)
    out = timed_modes(model, step, device, trace)
    out["kernels"] = kernel_count(step, device)      # no recompute: the last mode set above
    # The head's logits in one piece against in chunks (--head-chunk-mib 256), on a KL batch
    # with layer checkpointing (train.py's default on CUDA), where the [n, vocab] copies are largest.
    trainer.checkpoint_layers(model)
    kl_b, kl_keep = kl_batch_64x96(vocab, device)
    out["chunk"] = trainer.head_chunk_positions(256, vocab)
    for c in (0, out["chunk"]) if kl_rows else ():
        def kl_step(c=c):
            loss = trainer.batch_loss(model, kl_b, kl_keep, 6.0, chunk_positions=c)[0]
            loss.backward()
            stepper.flush()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[("kl", c)] = timed(kl_step, device, repeat=3, warmup=1), peak_gib(device)
    trainer.uncheckpoint_layers(model)
    if profile:
        print_profile(step, device, "train step (no recompute)")
    # the same step with 8-bit AdamW states (--adam-state-bits 8); the 16-bit states go first,
    # or the peak would hold both
    stepper.close()
    del stepper, step
    free(device)
    out.update(adam8_step_rows(model, deltas, lrs, step_with, device, profile))
    stepper = trainer.StepInBackward(deltas, lrs, 0.0, 1.0)
    step = step_with(stepper)
    # the same two modes with every decoder layer's training forward compiled (opt-in candidate)
    trainer.compile_layers(model)
    t0 = time.time()
    step()   # compiles (its time is reported apart)
    out["compile_s"] = time.time() - t0
    for recompute in (False, True):
        if recompute:
            trainer.checkpoint_layers(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[("compiled", recompute)] = timed(step, device, repeat=5, warmup=2), peak_gib(device)
    out["compiled_kernels"] = kernel_count(step, device)   # with recompute: the default mode
    trainer.uncheckpoint_layers(model)       # as before the compiled rows
    stepper.close()   # the hooks hold the optimizer (and its states) alive otherwise
    del stepper, step
    free(device)
    # both at once: compiled layers (fewer launches) and 8-bit states (less memory), no recompute
    stepper = trainer.StepInBackward(deltas, lrs, 0.0, 1.0, state_bits=8)
    step = step_with(stepper)
    out[("compiled", "adam8")] = timed(step, device, repeat=5, warmup=2), peak_gib(device)
    for every in (4, 3):   # and a share of the layers checkpointed, for the memory bar
        trainer.checkpoint_layers(model, every=every)
        step()   # compiles the checkpointed layers' graphs (not timed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[("compiled", "adam8", every)] = timed(step, device, repeat=5, warmup=1), peak_gib(device)
    trainer.uncheckpoint_layers(model)
    stepper.close()
    model.eval()
    return out


def timed_modes(model, step, device, after=None) -> dict:
    """{recompute: (seconds, peak GiB)} of step with layer checkpointing, then without (the model
    is left without); after() runs after each mode (the profile's memory trace)."""
    out = {}
    for recompute in (True, False):
        if recompute:
            trainer.checkpoint_layers(model)
        else:
            trainer.uncheckpoint_layers(model)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[recompute] = timed(step, device, repeat=5, warmup=2), peak_gib(device)
        if after:
            after()
    return out


def adam8_step_rows(model, deltas, lrs, step_with, device, profile=False) -> dict:
    """{("adam8", recompute): (seconds, peak GiB)} of the 16x64 step with 8-bit AdamW states, and
    "adam8_held": GiB held between its steps (the deltas, the states, the packed weights)."""
    stepper = trainer.StepInBackward(deltas, lrs, 0.0, 1.0, state_bits=8)
    step = step_with(stepper)
    try:
        out = {("adam8", k): v for k, v in timed_modes(model, step, device).items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
            out["adam8_held"] = torch.cuda.memory_allocated() / GiB
        if profile:
            print_profile(step, device, "train step, 8-bit AdamW states (no recompute)")
    finally:
        stepper.close()
        trainer.uncheckpoint_layers(model)
    return out


def memory_trace(model, deltas, stepper, batch, anchor) -> None:
    """Where the train step's peak GPU memory comes from (GiB)."""
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    delta_b = sum(d.numel() * d.element_size() for _, d in deltas)
    state_b = sum(t.numel() * t.element_size() for b in stepper.buckets
                  for st in b["opt"].state.values() for t in st.values() if torch.is_tensor(t))
    torch.cuda.reset_peak_memory_stats()
    loss = trainer.batch_loss(model, batch, anchor, 0.0)[0]
    torch.cuda.synchronize()
    fwd = torch.cuda.max_memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss.backward()
    stepper.flush()
    torch.cuda.synchronize()
    bwd = torch.cuda.max_memory_allocated()
    print(f"  train memory: held between steps {held / GiB:.2f} (deltas {delta_b / GiB:.2f}, "
          f"AdamW states {state_b / GiB:.2f}, rest {(held - delta_b - state_b) / GiB:.2f}); "
          f"peak in forward {fwd / GiB:.2f}, in backward+step {bwd / GiB:.2f}", flush=True)


def peer_train_step(config, dat, device, vocab):
    """transformers full fine-tune: fp32 master weights, bf16 autocast, fused AdamW."""
    model = peer_model(config, dat, device).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    batch = batch_16x64(vocab, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    try:
        return timed(step, device, repeat=5, warmup=2), peak_gib(device), kernel_count(step, device)
    finally:
        del model, opt


def row(rows, what, ours, peer=None, unit="", better="higher"):
    ratio = ""
    if peer:
        ratio = f"{ours / peer:.2f}x" if better == "higher" else f"{peer / ours:.2f}x"
    rows.append((what, f"{ours:.3g} {unit}".strip(), f"{peer:.3g} {unit}".strip() if peer else "-",
                 ratio))
    print(f"  {what}: ours {ours:.4g} {unit}" + (f", peer {peer:.4g} {unit} ({ratio})" if peer else ""),
          flush=True)


def table(rows) -> str:
    out = ["| figure | ours | plain transformers | ours vs peer (>1 = better) |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


def train_rows(rows, held: list, dat, config, device, vocab, ids, args) -> None:
    """The train-step rows (ours with and without layer checkpointing, the KL batch with the head
    in one piece and in chunks, compiled layers, the peer), the training path's decode and the
    export. held = [the model], the only reference: it is freed before the peer's step."""
    model = held.pop()
    n = args.decode_tokens
    steps = our_train_step(model, device, vocab, args.profile)
    reset_deltas(model)   # the fp2 runner's form: training path, zero deltas
    fp2_dec = graph_decode(model, ids, n, device)[0]
    row(rows, "decode batch 1, training path (run_training_fp2), runners' decoder", fp2_dec,
        unit="tok/s")
    t0 = time.time()
    export_model(model, dat, os.path.join(args.work, "exported.dat"))
    export_s = time.time() - t0
    del model
    free(device)
    peer_s, peer_peak, peer_kernels = peer_train_step(config, dat, device, vocab)
    free(device)
    for recompute, what in ((True, "layer checkpointing"), (False, "no checkpointing")):
        (step_s, step_peak) = steps[recompute]
        row(rows, f"train step 16x64, full parameters, eager (--compile-layers off), {what}",
            step_s, peer_s, "s", better="lower")
        row(rows, f"train peak GPU memory, {what}", step_peak, peer_peak, "GiB", better="lower")
    for recompute, what in ((True, "layer checkpointing"), (False, "no checkpointing")):
        (step_s, step_peak) = steps[("adam8", recompute)]
        row(rows, f"train step 16x64, 8-bit AdamW states (--adam-state-bits 8), {what}", step_s,
            peer_s, "s", better="lower")
        row(rows, f"train peak GPU memory, 8-bit AdamW states, {what}", step_peak, peer_peak,
            "GiB", better="lower")
    if "adam8_held" in steps:
        row(rows, "train memory held between steps, 8-bit AdamW states", steps["adam8_held"],
            unit="GiB")
    row(rows, "GPU kernels per train step (no checkpointing)", steps["kernels"], peer_kernels,
        better="lower")
    (one_s, one_peak), (chunk_s, chunk_peak) = steps[("kl", 0)], steps[("kl", steps["chunk"])]
    what = (f"train step 64x96, KL 6 on every row, layer checkpointing: head in chunks of "
            f"{steps['chunk']} positions (--head-chunk-mib 256) vs one piece")
    row(rows, what, chunk_s, one_s, "s", better="lower")
    row(rows, f"train peak GPU memory, {what[len('train step '):]}", chunk_peak, one_peak, "GiB",
        better="lower")
    for recompute, what in ((True, "layer checkpointing (train.py's default on CUDA for the 4B)"),
                            (False, "no checkpointing")):
        (step_s, step_peak) = steps[("compiled", recompute)]
        row(rows, f"train step 16x64, compiled decoder layers (trainer.compile_layers), {what}",
            step_s, peer_s, "s", better="lower")
        row(rows, f"train peak GPU memory, compiled decoder layers, {what}", step_peak,
            peer_peak, "GiB", better="lower")
    (step_s, step_peak) = steps[("compiled", "adam8")]
    row(rows, "train step 16x64, compiled decoder layers + 8-bit AdamW states, no checkpointing",
        step_s, peer_s, "s", better="lower")
    row(rows, "train peak GPU memory, compiled decoder layers + 8-bit AdamW states, no "
        "checkpointing", step_peak, peer_peak, "GiB", better="lower")
    for every in (4, 3):
        (step_s, step_peak) = steps[("compiled", "adam8", every)]
        what = f"compiled decoder layers + 8-bit AdamW states, 1 layer in {every} checkpointed"
        row(rows, f"train step 16x64, {what}", step_s, peer_s, "s", better="lower")
        row(rows, f"train peak GPU memory, {what}", step_peak, peer_peak, "GiB", better="lower")
    row(rows, "GPU kernels per train step, compiled decoder layers, layer checkpointing",
        steps["compiled_kernels"], peer_kernels, better="lower")
    row(rows, "compile of the decoder layers (first compiled step)", steps["compile_s"],
        unit="s", better="lower")
    row(rows, "export trained .dat", export_s, unit="s", better="lower")


def run_gpu(args):
    device = torch.device(args.device)
    config = load_config(args.model_dir)
    vocab = config.vocab_size
    os.makedirs(args.work, exist_ok=True)
    dat_path = os.path.join(args.work, "qwen3-4b-shape-random.dat")
    rows = []
    t0 = time.time()
    write_random_dat(config, dat_path, device)
    size = os.path.getsize(dat_path)
    print(f"wrote {dat_path}: {size / GiB:.2f} GiB in {time.time() - t0:.1f}s", flush=True)
    row(rows, "write random 4B .dat (quantize on GPU)", time.time() - t0, unit="s", better="lower")

    free(device)
    t0 = time.time()
    dat = read_dat(dat_path)
    model = load_model(dat, args.model_dir, device, torch.bfloat16)
    sync(device)
    load_s = time.time() - t0
    row(rows, ".dat load to GPU", size / load_s / 1e9, unit="GB/s")
    if device.type == "cuda":
        row(rows, "inference weights on GPU", torch.cuda.memory_allocated() / GiB, unit="GiB",
            better="lower")

    tok = chat.load_tokenizer(args.model_dir)
    ids = torch.tensor([chat.encode_prompt(tok, [], "你是誰")], device=device)
    if args.train_only:
        held = [model]   # train_rows frees it: no other reference may stay
        del model
        train_rows(rows, held, dat, config, device, vocab, ids, args)
        return rows, torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run)"
    # A suite-sized batch: 64 chats, 32 answer tokens (the suites' length).
    chats = [[{"role": "user", "content": f"Question {i}: what is {i} plus {i + 1}?"}]
             for i in range(64)]
    n = args.decode_tokens
    ours_dec = decode_tok_s(model, ids, n, device)
    graph_dec, graph_ids, mode, step_kernels = graph_decode(model, ids, n, device,
                                                            profile=args.profile)
    eager_ids = graph_decode(model, ids, n, device, use_graph=False)[1]
    # the same decoder with ops.decode_attention in the step instead of transformers' SDPA
    kern_dec, kern_ids = graph_decode(model, ids, n, device, fast_attention=True)[:2]
    print(f"  runners' decoder with the decode-attention kernel: its tokens == with SDPA: "
          f"{kern_ids == graph_ids}", flush=True)
    print(f"  runners' decoder: {mode}; its tokens == eager step tokens: {graph_ids == eager_ids}",
          flush=True)
    comp_dec, comp_ids, comp_kernels, comp_s = compiled_decode(model, ids, n, device,
                                                               "compiled step", eager_ids)
    fuse_siblings(model)   # --fused-gemv; the model stays fused (prefill and batches do not use it)
    fused_dec, _, fused_kernels, _ = compiled_decode(model, ids, n, device,
                                                     "compiled step + fused GEMVs", comp_ids,
                                                     profile=args.profile)
    ours_pre = prefill_tok_s(model, 512, device, vocab)
    ours_pre_graph = decoder_prefill_tok_s(model, 512, device, vocab)
    ours_batch = batched_greedy_s(model, tok, chats, 32, device, ours=True)
    dec_peak = peak_gib(device)
    # A self-KL round of real-en-v13/v14 (after the peak above: its KV cache is 6x a suite's):
    # 384 candidates in one batch (--self-kl-batch 384) or in the suites' batches of 64 (v13);
    # the same prompts cycled, so only the batching differs.
    round_chats = [chats[i % len(chats)] for i in range(384)]
    round_one = batched_greedy_s(model, tok, round_chats, 32, device, ours=True)
    round_six = batched_greedy_s(model, tok, round_chats, 32, device, ours=True, batch_size=64)
    peer = peer_model(config, dat, device)
    peer_dec = decode_tok_s(peer, ids, n, device)
    peer_pre = prefill_tok_s(peer, 512, device, vocab)
    peer_static = try_static_decode(peer, ids, n, device) if args.static else None
    peer_batch = batched_greedy_s(peer, tok, chats, 32, device, ours=False)
    del peer
    free(device)
    torch._dynamo.reset()
    row(rows, f"decode batch 1 ({n} tokens, greedy), transformers.generate eager", ours_dec,
        peer_dec, "tok/s")
    row(rows, "decode batch 1, runners' decoder (static cache + CUDA graph) vs peer eager",
        graph_dec, peer_dec, "tok/s")
    peer_best, vs = ((peer_static, "peer static cache + torch.compile") if args.static
                     else (peer_dec, "peer eager"))
    if args.static:
        row(rows, f"decode batch 1, runners' decoder vs {vs}", graph_dec, peer_best, "tok/s")
    row(rows, "decode batch 1, runners' decoder: decode-attention kernel vs SDPA in the step",
        kern_dec, graph_dec, "tok/s")
    row(rows, f"decode batch 1, runners' decoder with compiled step vs {vs}", comp_dec, peer_best,
        "tok/s")
    row(rows, f"decode batch 1, compiled step + fused q/k/v and gate/up GEMVs (--fused-gemv) vs "
              f"{vs}", fused_dec, peer_best, "tok/s")
    row(rows, "GPU kernels per decode step, runners' decoder (eager step)", step_kernels,
        unit="", better="lower")
    row(rows, "GPU kernels per decode step, compiled step", comp_kernels, unit="", better="lower")
    row(rows, "GPU kernels per decode step, compiled step + fused GEMVs", fused_kernels, unit="",
        better="lower")
    row(rows, "compile + capture + first decode, compiled step", comp_s, unit="s", better="lower")
    row(rows, "prefill 512 tokens, model forward (eager) vs peer eager", ours_pre, peer_pre,
        "tok/s")
    row(rows, "prefill 512 tokens, runners' decoder (bucket 512, CUDA graph) vs peer eager",
        ours_pre_graph, peer_pre, "tok/s")
    row(rows, f"batched greedy, {len(chats)} chats x 32 tokens (suites, probes, self-KL): "
              "greedy_chats vs peer generate", ours_batch, peer_batch, "s", better="lower")
    row(rows, "self-KL round, 384 chats x 32 tokens: one batch (--self-kl-batch 384) vs six "
              "batches of 64 (the suites' batch)", round_one, round_six, "s", better="lower")
    row(rows, "inference peak GPU memory (ours)", dec_peak, unit="GiB", better="lower")

    if args.skip_train:
        del model
        free(device)
        start_rows(rows, device)
        return rows, torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run)"
    held = [model]
    del model
    train_rows(rows, held, dat, config, device, vocab, ids, args)
    if not args.skip_stage:
        cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "train.py"),
               "--recipe", "data/stages/stageG-v2.args", "--input-dat", dat_path,
               "--model-dir", args.model_dir, "--output-dat", os.path.join(args.work, "stageG.dat"),
               "--device", args.device,
               # Random weights cannot reach the target and know no facts: one attempt, no
               # mid-run probes, no collapse verdict from repetition/facts/drift, so the wall
               # time is one whole pass (100 steps + probes + export).
               "--max-retries", "0", "--probe-every", "0", "--max-repetition", "1.1",
               "--collapse-facts", "0", "--collapse-nll-drift", "inf"]
        t0 = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, NVFP4LAB_DEVLOG=os.path.join(args.work, "DevLog.md"),
                                    NVFP4LAB_ARTIFACT_LIST=os.path.join(args.work, "list.md"),
                                    NVFP4LAB_CACHE=os.path.join(args.work, "cache")))
        stage_s = time.time() - t0
        print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
        # Random weights cannot reach the target: exit 3 (trained, not reached) is the expected end.
        row(rows, f"train.py Stage G v2 end to end (100 steps + probes + export; exit "
                  f"{r.returncode})", stage_s, unit="s", better="lower")
    start_rows(rows, device)
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "validate.py"), "--weight",
           dat_path, "--model-dir", args.model_dir, "--device", args.device]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, NVFP4LAB_DEVLOG=os.path.join(args.work, "DevLog.md")))
    validate_s = time.time() - t0
    print(r.stdout[-6000:], r.stderr[-2000:], flush=True)
    row(rows, f"make validate end to end (both runners, guard, load; exit {r.returncode})",
        validate_s, unit="s", better="lower")
    warm_rows(rows, dat_path, args.model_dir, args.device, args.work)
    return rows, torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke run)"


def warm_rows(rows, dat_path, model_dir, device, work) -> None:
    """A runner's first token and `make validate`, through the warm runner server against a cold
    start (peer = cold: the same scripts with NVFP4LAB_RUNNER_SERVER=off), and the server's own
    start (paid once, before the runs it serves)."""
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, NVFP4LAB_DEVLOG=os.path.join(work, "DevLog.md"),
               NVFP4LAB_RUNNER_SERVER=os.path.join(work, "runner.sock"))
    cold = dict(env, NVFP4LAB_RUNNER_SERVER="off")
    t0 = time.time()
    r = subprocess.run([sys.executable, os.path.join(here, "runner_server.py"), "--detach",
                        "--idle-exit", "600", "--log", os.path.join(work, "runner-server.log")],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        print(r.stdout, r.stderr, flush=True)
        return
    row(rows, "warm runner server start (imports, once)", time.time() - t0, unit="s",
        better="lower")
    first = [sys.executable, os.path.join(here, "run_training_fp2.py"), "--weight", dat_path,
             "--model-dir", model_dir, "--device", device, "--max-tokens", "1", "--timing",
             "false", "--stop-here", "false"]
    validate = [sys.executable, os.path.join(here, "validate.py"), "--weight", dat_path,
                "--model-dir", model_dir, "--device", device]
    try:
        for what, cmd in (("runner launch to its first token and exit (run_training_fp2, "
                           "--max-tokens 1)", first),
                          ("make validate end to end (both runners, guard)", validate)):
            took = {}
            for side, e in (("cold", cold), ("warm", env)):
                t0 = time.time()
                r = subprocess.run(cmd, env=e, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True)
                took[side] = time.time() - t0
                if r.returncode or (side == "warm" and "[warm] running in a child" not in
                                    r.stderr + r.stdout):
                    print(f"{side} {what}: exit {r.returncode}\n{r.stdout[-2000:]}"
                          f"{r.stderr[-2000:]}", flush=True)
            row(rows, f"{what}: warm runner server vs cold start", took["warm"], took["cold"],
                "s", better="lower")
    finally:
        subprocess.run([sys.executable, os.path.join(here, "runner_server.py"), "--stop"],
                       env=env, capture_output=True)


def start_rows(rows, device) -> None:
    """What a runner pays before it reads the weights, in parts: each command runs in a fresh
    interpreter and adds one piece to the one before (imports, then CUDA init); measured after
    one run of the whole, so the files are in the page cache as on a second launch."""
    parts = [("python + import torch", "import torch"),
             ("+ transformers' Qwen3 and StaticCache",
              "import torch; from transformers import Qwen3ForCausalLM, StaticCache"),
             ("+ our package (the NVFP4 extension)",
              "import torch; from transformers import Qwen3ForCausalLM, StaticCache; "
              "import nvfp4lab.model, nvfp4lab.decode"),
             ("+ CUDA init",
              "import torch; from transformers import Qwen3ForCausalLM, StaticCache; "
              "import nvfp4lab.model, nvfp4lab.decode; torch.zeros(1, device='cuda')")]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    parts = [(what, code) for what, code in parts if device.type == "cuda" or "cuda" not in code]
    subprocess.run([sys.executable, "-c", parts[-1][1]], check=True, env=env)  # warm file cache
    for what, code in parts:
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        row(rows, f"runner start: {what}", time.time() - t0, unit="s", better="lower")


def run_cpu(args):
    device = torch.device("cpu")
    if not os.path.exists(paths.PROXY_DAT):
        sys.exit(f"error: {paths.PROXY_DAT}: no such file (run `make proxy` first)")
    rows = []
    t0 = time.time()
    dat = read_dat(paths.PROXY_DAT)
    model = load_model(dat, str(paths.PROXY_DIR), device, torch.float32)
    row(rows, "proxy .dat load", time.time() - t0, unit="s", better="lower")
    tok = chat.load_tokenizer(str(paths.PROXY_DIR))
    ids = torch.tensor([chat.encode_prompt(tok, [], "你是誰")])
    row(rows, "proxy decode batch 1", decode_tok_s(model, ids, 32, device), unit="tok/s")
    step_s = our_train_step(model, device, model.config.vocab_size, kl_rows=False)[False][0]
    row(rows, "proxy train step 16x64 (no checkpointing, train.py's CPU default)", step_s,
        unit="s", better="lower")
    warm_rows(rows, str(paths.PROXY_DAT), str(paths.PROXY_DIR), "cpu", args.work)
    return rows, f"CPU ({os.cpu_count()} cores)"


def command_line(argv: list[str]) -> str:
    """The bench's command as it was given, for the table's head; the scratch folder (--work) is
    shown as <scratch>: it is a path of the machine, not of the repository."""
    out, hide = [], False
    for a in argv:
        if hide:
            out.append("<scratch>")
        elif a.startswith("--work="):
            a = "--work=<scratch>"
        if not hide:
            out.append(a)
        hide = a == "--work"
    return " ".join(["python scripts/bench.py"] + out)


def report(rows, device_name, args):
    head = (f"## {datetime.date.today()} — {device_name}\n\n"
            f"torch {torch.__version__}, transformers {transformers.__version__}; "
            f"command: `{command_line(sys.argv[1:])}`\n\n")
    text = head + table(rows) + "\n"
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "bench.md"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as f:
            json.dump(rows, f, ensure_ascii=False, indent=1)
    if args.write_doc:
        with open(paths.ROOT / "doc" / "BENCHMARKS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)
    print("\n" + text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="time the proxy on the CPU instead")
    p.add_argument("--model-dir", default=paths.USER_MODEL_DIR,
                   help="config.json (+ tokenizer) of the 4B model (only its shape is used)")
    p.add_argument("--work", default="/tmp/nvfp4lab-bench")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--skip-stage", action="store_true", help="skip the train.py end-to-end run")
    p.add_argument("--write-doc", action="store_true", help="append the table to doc/BENCHMARKS.md")
    p.add_argument("--device", default="cuda", help="cpu only for a smoke run on a tiny config")
    p.add_argument("--static", action="store_true",
                   help="also time decode with transformers' static cache (compiled forward)")
    p.add_argument("--profile", action="store_true", help="print kernel profiles of our train step and of one decode step (eager, and compiled with the fused GEMVs)")
    p.add_argument("--train-only", action="store_true",
                   help="the train-step rows only (no decode, prefill, Stage G run, start-up or "
                        "make validate)")
    p.add_argument("--skip-train", action="store_true",
                   help="decode, prefill and start-up figures only (no train steps, Stage G run "
                        "or make validate)")
    args = p.parse_args()
    if args.cpu:
        rows, name = run_cpu(args)
    else:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print("error: make bench needs a CUDA GPU (none found); `make bench-cpu` times the "
                  "proxy on the CPU instead", file=sys.stderr)
            return 1
        rows, name = run_gpu(args)
    report(rows, name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
