"""Training starts from the user's model (issue 12).

The user's base file was written by torchao's `NVFP4Tensor.to_nvfp4` (scale floor 2^-6, codes
rounded half to even), not by our converter. The fixture here is built the way that file was,
with torchao's rule re-implemented below in a few lines of plain torch and the original's byte
layout written by hand, so nothing of ours produced it. On such a file (and on one with subnormal
scales, and on one from our converter) zero delta must be the stored model bit for bit: in the
training forward, in rollback and in export.
"""
import hashlib
from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from conftest import build_tiny_qwen
from nvfp4lab import chat, mix, ops, trainer
from nvfp4lab.config import TrainConfig
from nvfp4lab.dat import read_dat
from nvfp4lab.tsv import Row
from nvfp4lab.model import (NVFP4Linear, export_model, load_model, make_trainable, set_use_delta,
                            trainable_deltas, updated_tensors)

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


# ---------------------------------------------------------------- an independent torchao-style file
def torchao_to_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchao to_nvfp4 (no per-tensor scale), written from its description: fp32 blocks of 16,
    scale = clamp(amax/6, finfo(e4m3).tiny, 448) -> e4m3, x = w/scale clamped to +-6, nearest
    e2m1 value with ties to the even code, sign bit from the float, even element in the low nibble."""
    n, k = w.shape
    b = w.float().reshape(n, k // 16, 16)
    tiny = torch.finfo(torch.float8_e4m3fn).tiny
    scale = (b.abs().amax(-1) / 6).clamp(tiny, 448.0).to(torch.float8_e4m3fn)
    x = (b / scale.float().unsqueeze(-1)).clamp(-6, 6)
    dist = (x.abs().unsqueeze(-1) - E2M1).abs()                       # [n, k/16, 16, 8]
    nearest = dist == dist.min(-1, keepdim=True).values               # one, or two on a tie
    idx = torch.arange(8)
    even = torch.where(nearest & (idx % 2 == 0), idx, 99).min(-1).values
    mag = torch.where(even == 99, torch.where(nearest, idx, 99).min(-1).values, even)
    code = (mag | (torch.signbit(x).long() << 3)).reshape(n, k).to(torch.uint8)
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return packed.contiguous(), scale.view(torch.uint8).contiguous()


def decode_nvfp4(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The independent dequantization: codebook[code] * float(e4m3 scale)."""
    codes = torch.stack([q & 15, q >> 4], -1).reshape(q.shape[0], -1).long()
    vals = torch.cat([E2M1, -E2M1])[codes]
    return (vals.reshape(q.shape[0], -1, 16) * s.view(torch.float8_e4m3fn).float().unsqueeze(-1)).reshape(vals.shape)


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_original_layout(path: Path, entries: list[tuple[str, int, torch.Tensor]]) -> None:
    """The original's `.dat`: LEB128 count, then key, elemType, ndim, dims, raw little-endian payload."""
    blob = bytearray(leb128(len(entries)))
    for key, etype, t in entries:
        kb = key.encode()
        blob += leb128(len(kb)) + kb + leb128(etype) + leb128(t.dim())
        for d in t.shape:
            blob += leb128(d)
        blob += t.contiguous().view(torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(blob))


TINY = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
            max_position_embeddings=512, bos_token_id=151643, eos_token_id=151645)


def build_torchao_file(out_dir: Path, quantizer=torchao_to_nvfp4, seed=0) -> tuple[Path, Path, dict]:
    """A tiny Qwen3 with Qwen3-sized weights (sigma 0.02: most blocks at the 2^-6 floor), written
    as the user's file was: state_dict order, `.weight.qdata` elemType 0, `.weight.scale` 101,
    fp16 dense (5), lm_head its own pair although config.json says tied. Returns (model dir, .dat,
    the dequantized weights by name)."""
    torch.manual_seed(seed)
    cfg = Qwen3Config(**TINY)
    model = Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
            else:
                p.uniform_(0.8, 1.2)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out_dir)
    sd = model.state_dict()
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    entries, weights = [], {}
    for name, t in sd.items():
        if name in linears or name == "lm_head.weight":
            q, s = quantizer(t.to(torch.bfloat16))                     # the user quantized bf16 weights
            entries += [(f"{name}.qdata", 0, q), (f"{name}.scale", 101, s)]
            weights[name] = decode_nvfp4(q, s)
        else:
            entries.append((name, 5, t.half()))
            weights[name] = t.half().float()
    dat = out_dir / "torchao.dat"
    write_original_layout(dat, entries)
    return out_dir, dat, weights


def subnormal_scales(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Another producer: scale floor 2^-16 (subnormal e4m3 bytes) and ties rounded up, as THSFP4."""
    n, k = w.shape
    b = w.float().reshape(n, k // 16, 16) * 0.05                        # small weights -> subnormal scales
    scale = (b.abs().amax(-1) / 6).clamp(2.0 ** -16, 448.0).to(torch.float8_e4m3fn)
    x = (b / (scale.float().unsqueeze(-1) + 1e-12)).clamp(-6, 6)
    mag = (x.abs().unsqueeze(-1) >= torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])).sum(-1)
    code = (mag | ((x < 0).long() << 3)).reshape(n, k).to(torch.uint8)
    return (code[:, 0::2] | (code[:, 1::2] << 4)).contiguous(), scale.view(torch.uint8).contiguous()


@pytest.fixture(scope="module")
def torchao_file(tmp_path_factory):
    return build_torchao_file(tmp_path_factory.mktemp("torchao"))


@pytest.fixture(scope="module", params=["torchao", "subnormal", "ours"])
def any_file(request, tmp_path_factory, torchao_file):
    """(model dir, .dat) from three producers: torchao, a 2^-16-floor quantizer, our converter."""
    if request.param == "torchao":
        return torchao_file[:2]
    if request.param == "subnormal":
        return build_torchao_file(tmp_path_factory.mktemp("subnormal"), subnormal_scales)[:2]
    return build_tiny_qwen(tmp_path_factory.mktemp("ours"))


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def logits_of(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[151644, 872, 198, 105043, 100165, 151645, 198, 151644, 77091, 198]])


# ---------------------------------------------------------------- the fixture is what it claims
def test_fixture_blocks_sit_at_the_torchao_floor(torchao_file):
    _, dat_path, _ = torchao_file
    dat = read_dat(dat_path)
    scales = torch.cat([dat.tensor(e.key).flatten() for e in dat.entries if e.key.endswith(".scale")])
    assert {e.elem_type for e in dat.entries} == {0, 5, 101}
    assert (scales == 0x08).float().mean() > 0.5                     # the floor, as the user's file
    assert int((scales < 0x08).sum()) == 0
    # our quantizer is the same rule: it writes these blocks byte for byte
    up = "model.layers.0.mlp.up_proj.weight"
    w = ops.dequantize(*dat.nvfp4_pair(up))
    q, s = ops.quantize(w)
    assert torch.equal(q, dat.tensor(up + ".qdata")) and torch.equal(s, dat.tensor(up + ".scale"))


def test_quantize_equals_the_independent_torchao_rule():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-3, 1, 64).unsqueeze(1)
    w[0, :16] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.0, 0.0, -0.1, 0.2, 0.3, 5.5, -6.0, 0.5])
    for dt in (torch.float32, torch.bfloat16):
        q, s = ops.quantize(w.to(dt))
        qa, sa = torchao_to_nvfp4(w.to(dt))
        assert torch.equal(s, sa)
        assert torch.equal(q, qa)


# ---------------------------------------------------------------- zero delta = the stored model
def test_inference_logits_equal_an_independent_dequant_reference(torchao_file):
    model_dir, dat_path, weights = torchao_file
    ours = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    cfg = Qwen3Config.from_pretrained(model_dir)
    cfg.tie_word_embeddings = False
    ref = Qwen3ForCausalLM(cfg).eval()
    ref.load_state_dict(weights)
    a, b = logits_of(ours, IDS), logits_of(ref, IDS)
    assert ((a - b).norm() / b.norm()).item() <= 1e-5


def test_zero_delta_training_path_rollback_and_export_are_exact(any_file, tmp_path):
    model_dir, dat_path = any_file
    before = sha(dat_path)
    dat = read_dat(dat_path)
    model = load_model(dat, str(model_dir), "cpu", torch.float32)
    inference = logits_of(model, IDS)
    deltas = make_trainable(model, torch.bfloat16)
    assert torch.equal(logits_of(model, IDS), inference)             # training forward at delta 0
    for mod in model.modules():                                       # the weight it computes with
        if isinstance(mod, NVFP4Linear):
            assert torch.equal(ops.fake_quantize_delta(mod.qdata, mod.scale, mod.delta, torch.float32),
                               ops.dequantize(mod.qdata, mod.scale))
    assert updated_tensors(model, dat) == {}
    out = tmp_path / "zero.dat"
    export_model(model, dat, str(out))
    assert sha(out) == before                                         # byte-identical export
    set_use_delta(model, False)                                       # the KL anchor's base
    assert torch.equal(logits_of(model, IDS), inference)
    set_use_delta(model, True)
    assert len(deltas) > 0 and sha(dat_path) == before


# ---------------------------------------------------------------- training moves only what it should
def one_step(model, tok, deltas, lrs, steps=2):
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "anchor")] * 2
    batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
    stepper = trainer.StepInBackward(deltas, lrs, 0.0, 1.0)
    model.train()
    for _ in range(steps):
        trainer.batch_loss(model, batch, anchor, 0.5)[0].backward()
        stepper.flush()
    stepper.close()
    model.eval()


def test_export_holds_exactly_the_trained_codes_and_base_is_untouched(torchao_file, tmp_path):
    """After training at lr > 0: every exported NVFP4 tensor's codes and scales are the ones the
    training forward computed with (not only a close loss), untouched blocks keep their bytes, and
    neither the base file nor the in-memory base changed. Dense tensors (norms, embeddings) are
    stored as float16, so a trained dense delta is rounded once more on export; the NVFP4 part is
    exact, which the logits check shows with the dense groups frozen."""
    model_dir, dat_path, _ = torchao_file
    before = sha(dat_path)
    dat = read_dat(dat_path)
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(dat, str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.bfloat16)
    one_step(model, tok, deltas, {"head": 1e-2, "embed": 0.0, "norm": 0.0, "blocks": 1e-2})
    trained = logits_of(model, IDS)
    out = tmp_path / "trained.dat"
    keys = export_model(model, dat, str(out))
    assert any(".layers." in k and k.endswith(".qdata") for k in keys)   # blocks moved, not only the head
    new = read_dat(out)
    n_blocks = n_moved = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, NVFP4Linear):
            continue
        key = f"{name}.weight"
        assert torch.equal(mod.qdata, dat.tensor(key + ".qdata"))        # in-memory base untouched
        assert torch.equal(mod.scale, dat.tensor(key + ".scale"))
        q2, s2 = ops.requantize_delta(mod.qdata, mod.scale, mod.delta.detach())
        assert torch.equal(new.tensor(key + ".qdata"), q2), key          # what training used
        assert torch.equal(new.tensor(key + ".scale"), s2), key
        assert torch.equal(ops.dequantize(q2, s2), ops.fake_quantize_delta(
            mod.qdata, mod.scale, mod.delta.detach(), torch.float32)), key
        untouched = (mod.delta.detach() == 0).reshape(mod.out_features, -1, 16).all(-1)
        assert torch.equal(s2[untouched], mod.scale[untouched])
        n_blocks += s2.numel()
        n_moved += int((s2 != mod.scale).sum())
    assert n_moved < n_blocks                                            # most scales are kept
    reloaded = load_model(new, str(model_dir), "cpu", torch.float32)
    assert torch.equal(logits_of(reloaded, IDS), trained)               # same model, exactly
    assert sha(dat_path) == before


def test_export_of_dense_deltas_is_the_stored_dtype_of_base_plus_delta(torchao_file, tmp_path):
    model_dir, dat_path, _ = torchao_file
    dat = read_dat(dat_path)
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(dat, str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.bfloat16)
    one_step(model, tok, deltas, {"head": 0.0, "embed": 1e-2, "norm": 1e-2, "blocks": 0.0}, steps=1)
    out = tmp_path / "dense.dat"
    keys = export_model(model, dat, str(out))
    assert keys and all(".qdata" not in k and ".scale" not in k for k in keys)
    new = read_dat(out)
    for key, d in deltas:
        if key in keys:
            assert torch.equal(new.tensor(key), (dat.tensor(key).float() + d.detach().float()).half()), key


@pytest.mark.parametrize("group", ["head", "embed", "norm", "blocks"])
def test_each_group_lr_reaches_its_tensors_only(torchao_file, group):
    model_dir, dat_path, _ = torchao_file
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.float32)
    lrs = {g: (1e-2 if g == group else 0.0) for g in trainer.GROUPS}
    one_step(model, tok, deltas, lrs, steps=1)
    moved = {k for k, d in deltas if bool(d.detach().any())}
    expect = {"head": lambda k: k.startswith("lm_head"),
              "embed": lambda k: "embed_tokens" in k,
              "norm": lambda k: "norm" in k,
              "blocks": lambda k: k.endswith("proj.weight")}[group]
    assert moved and all(expect(k) for k in moved), sorted(moved)[:5]
    if group == "blocks":
        assert any(".mlp." in k for k in moved) and any(".self_attn." in k for k in moved)


def test_cli_group_lr_flags_map_onto_the_groups():
    """--lr-head etc. set only their group; the rest fall back to --lr."""
    import importlib.util
    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("train_cli", ROOT / "scripts" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    args = train.defaults(train.parse_args(["--train-data", "x.tsv", "--lr", "2e-5", "--lr-head", "1e-3",
                                            "--lr-blocks", "3e-4"]))
    assert args.lrs == {"head": 1e-3, "embed": 2e-5, "norm": 2e-5, "blocks": 3e-4}


def test_collapse_falls_back_to_exactly_the_initial_model(torchao_file):
    """Every attempt collapses (NaN loss at lr 1e30): the fallback resets, retries with the safer
    policy, and leaves the model equal to the initial one, weights and logits, bit for bit."""
    model_dir, dat_path, _ = torchao_file
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    initial = logits_of(model, IDS)
    deltas = make_trainable(model, torch.bfloat16)
    src = mix.Source("mem", 1.0, "target", [Row("你是誰", "我是 F# 之神", "mem", 1)] * 4)
    cfg = TrainConfig(train_data="mem", lr=1e30, weight_decay=0.0, grad_clip=0.0, seed=1, steps=3,
                      step_chunk_rows=4, sample_mode="random", seq_len=48, kl_weight=0.0,
                      log_every=1, probe_every=0, max_retries=2, retry_lr_scale=0.5)
    assert cfg.lrs == {g: 1e30 for g in trainer.GROUPS}
    lines = []
    attempts = trainer.train_with_fallback(model, tok, deltas, [src], None, cfg, {}, None,
                                           lines.append)
    assert [a.status for a in attempts] == ["collapse"] * 3
    assert [a.lrs["head"] for a in attempts] == [1e30, 5e29, 2.5e29]       # safer policy each retry
    assert [a.anchor_scale for a in attempts] == [1.0, 2.0, 4.0]
    assert all(not bool(d.detach().any()) for _, d in trainable_deltas(model))
    assert torch.equal(logits_of(model, IDS), initial)
    assert sum("weights restored to the initial ones" in x for x in lines) == 3


# ---------------------------------------------------------------- a loader as tolerant as the original
def rewrite(src: Path, dst: Path, rename=lambda k: k, extra=(), scale_etype=101) -> Path:
    dat = read_dat(src)
    entries = []
    for e in dat.entries:
        t = dat.tensor(e.key).clone()
        etype = e.elem_type
        if e.key.endswith(".scale") and scale_etype == 5:
            t, etype = t.view(torch.float8_e4m3fn).half(), 5
        entries.append((rename(e.key), etype, t))
    write_original_layout(dst, entries + list(extra))
    return dst


def test_keys_without_weight_and_extra_tensors_load_and_export_unchanged(torchao_file, tmp_path, capsys):
    model_dir, dat_path, _ = torchao_file
    extra = [("model.vision_tower.weight", 5, torch.ones(4, 8).half())]
    path = rewrite(dat_path, tmp_path / "short.dat", lambda k: k.replace(".weight.qdata", ".qdata")
                   .replace(".weight.scale", ".scale"), extra)
    dat = read_dat(path)
    model = load_model(dat, str(model_dir), "cpu", torch.float32)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "model.vision_tower.weight" in err and str(path) in err
    ref = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    assert torch.equal(logits_of(model, IDS), logits_of(ref, IDS))
    deltas = dict(make_trainable(model, torch.float32))
    with torch.no_grad():
        deltas["model.layers.0.mlp.up_proj.weight"][0, :16] = 0.5
    out = tmp_path / "short-out.dat"
    keys = export_model(model, dat, str(out))
    assert keys == ["model.layers.0.mlp.up_proj.qdata", "model.layers.0.mlp.up_proj.scale"]
    new = read_dat(out)
    assert [e.key for e in new.entries] == [e.key for e in dat.entries]
    assert torch.equal(new.tensor("model.vision_tower.weight"), extra[0][2])


def test_float16_scales_are_a_clear_error(torchao_file, tmp_path):
    from nvfp4lab.dat import DatFormatError
    _, dat_path, _ = torchao_file
    path = rewrite(dat_path, tmp_path / "fp16-scales.dat", scale_etype=5)
    with pytest.raises(DatFormatError, match=r"float16 \(elemType 5\).*before 2026-02-26"):
        read_dat(path)


def test_inspect_names_the_producer(torchao_file, tiny_qwen, tmp_path):
    import subprocess
    import sys
    from conftest import ROOT
    _, dat_path, _ = torchao_file
    sub = build_torchao_file(tmp_path / "sub", subnormal_scales)[1]
    for path, words in ((dat_path, "torchao-style"), (sub, "not torchao")):
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_dat.py"), str(path)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        line = next(x for x in r.stdout.splitlines() if "block scales" in x)
        assert words in line and "at the 2^-6 floor" in line
    floor = float(line.split("floor ")[1].split("%")[0])
    assert floor < 50.0          # the subnormal file has most blocks below, not at, the floor


# ---------------------------------------------------------------- the NVFP4 update report
def test_update_report_shows_which_groups_moved(torchao_file):
    from nvfp4lab.update_report import format_report, update_report
    model_dir, dat_path, _ = torchao_file
    dat = read_dat(dat_path)
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(dat, str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, torch.bfloat16)
    assert all(g.changed == 0 and g.scales_changed == 0 for g in update_report(model, dat))
    # blocks at a tiny LR: the updates stay below half a code step, nothing is stored differently
    one_step(model, tok, deltas, {"head": 0.0, "embed": 0.0, "norm": 0.0, "blocks": 1e-6})
    assert any(bool(d.any()) for k, d in deltas if "layers" in k)
    rows = {g.group: g for g in update_report(model, dat)}
    assert rows["layer 0"].changed == 0 and rows["layer 1"].changed == 0
    # a real LR on the head only: its codes move, the layers' do not
    one_step(model, tok, deltas, {"head": 1e-2, "embed": 0.0, "norm": 0.0, "blocks": 0.0})
    rows = {g.group: g for g in update_report(model, dat)}
    assert rows["head"].changed > 0 and rows["layer 0"].changed == 0
    q, s = dat.nvfp4_pair("lm_head.weight")
    q2, s2 = ops.requantize_delta(q, s, dict(deltas)["lm_head.weight"].detach())
    assert rows["head"].changed == int((ops.dequantize(q2, s2) != ops.dequantize(q, s)).sum())
    table = format_report(list(rows.values()))
    assert "| head |" in table and "| all layers |" in table and "0.000%" in table
