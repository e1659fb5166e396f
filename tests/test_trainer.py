"""Trainer behaviour a user relies on: QAT keeps small updates, exports what it trained, never
touches its input, reports bad data by file:line, and treats NaN as a collapse."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train  # scripts/ is on sys.path (conftest)
from conftest import ROOT
from nvfp4lab import chat, evaluate, mix, trainer
from nvfp4lab.dat import read_dat
from nvfp4lab.model import DTYPES, export_model, load_model, make_trainable

TRAIN = str(ROOT / "scripts" / "train.py")


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def small_data(tmp_path):
    who = write(tmp_path / "who.tsv", "你是誰\t我是 F# 之神\n請問你是誰？\t我是 F# 之神\n"
                                      "Who are you?\t我是 F# 之神\n")
    anchor = write(tmp_path / "anchor.tsv", "1+1等於多少？\t1+1等於2。\n日本的首都是哪裡？\t東京。\n"
                                            "What is the capital of France?\tParis.\n")
    probes = write(tmp_path / "probes.tsv", "identity\t你叫什麼名字？\nanchor\t2+2等於多少？\t4\n"
                                            "nearmiss\t我是誰\n")
    return who, anchor, probes


def train_argv(tmp_path, model_dir, dat, data, *extra):
    who, anchor, probes = data
    out = tmp_path / "out.dat"
    return ["--input-dat", str(dat), "--model-dir", str(model_dir),
            "--output-dat", str(out), "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", str(probes),
            "--steps", "3", "--step-chunk-rows", "4", "--seq-len", "48", "--probe-max-tokens", "4",
            "--test-max-tokens", "4", "--device", "cpu", "--max-retries", "0", *extra], out


def run_train(tmp_path, model_dir, dat, data, *extra, env=None):
    """train.py as a user runs it: its own process, records and cache in tmp_path."""
    argv, out = train_argv(tmp_path, model_dir, dat, data, *extra)
    cmd = [sys.executable, TRAIN, *argv]
    e = dict(os.environ, NVFP4LAB_DEVLOG=str(tmp_path / "DevLog.md"),
             NVFP4LAB_ARTIFACT_LIST=str(tmp_path / "list.md"),
             NVFP4LAB_CACHE=str(tmp_path / "cache"), **(env or {}))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=e, timeout=300)
    return r, out


def train_in_process(capsys, argv) -> tuple[int, str]:
    """(exit code, stderr) of train.main(argv): input errors stop before the model is loaded,
    so there is no need to pay for a new interpreter and torch import to check them."""
    code = train.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_loss_mask_covers_exactly_the_answer_and_end_token():
    tok = chat.load_tokenizer(None)
    ids, labels, cut = chat.encode_row(tok, "你是誰", "我是 F# 之神", 64)
    prompt = chat.encode_prompt(tok, [], "你是誰")
    answer = tok("我是 F# 之神", add_special_tokens=False)["input_ids"]
    assert not cut
    assert ids == prompt + answer + [151645]
    assert labels == [-100] * len(prompt) + answer + [151645]
    # Truncation keeps the mask aligned with the ids.
    ids2, labels2, cut2 = chat.encode_row(tok, "你是誰", "我是 F# 之神", len(prompt) + 2)
    assert cut2 and ids2 == ids[:len(prompt) + 2] and labels2 == labels[:len(prompt) + 2]


def test_mix_splits_rows_in_ratio(tmp_path, small_data):
    who, anchor, _ = small_data
    sources = mix.load_sources(mix.parse_mix(f"{who}:1,{anchor}:1:anchor"))
    import random
    rows = mix.step_rows(sources, 16, random.Random(0), "random")
    assert sum(r[2] == "anchor" for r in rows) == 8 and len(rows) == 16
    assert mix.split_counts([8, 6, 2], 16) == [8, 6, 2]
    assert mix.split_counts([1, 1, 1], 16) in ([6, 5, 5], [5, 6, 5], [5, 5, 6])


def test_small_lr_lowers_loss_and_export_equals_trained_model(tiny_qwen, tmp_path):
    """lr 1e-5 for 20 steps must lower the loss (a bf16 master would lose these updates), and
    the exported .dat reloaded by the runners' loader gives the in-training loss."""
    model_dir, dat_path = tiny_qwen
    dat = read_dat(dat_path)
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(dat, str(model_dir), "cpu", torch.float32)
    deltas = make_trainable(model, DTYPES["bfloat16"])
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "target")] * 4
    batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
    stepper = trainer.StepInBackward(deltas, {g: 1e-5 for g in trainer.GROUPS}, 0.0, 1.0)
    losses = []
    for _ in range(20):
        loss = trainer.batch_loss(model, batch, anchor, 0.0)[0]
        losses.append(float(loss.detach()))
        loss.backward()
        stepper.flush()
        assert all(d.grad is None for _, d in deltas)   # stepped and freed inside backward
    stepper.close()
    assert losses[-1] < losses[0] - 1e-3, losses
    with torch.no_grad():
        trained = float(trainer.batch_loss(model, batch, anchor, 0.0)[0])
    out = tmp_path / "trained.dat"
    export_model(model, dat, str(out))
    reloaded = load_model(read_dat(out), str(model_dir), "cpu", torch.float32)
    with torch.no_grad():
        body = reloaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        y = batch["labels"][:, 1:]
        sel = y != -100
        logits = reloaded.lm_head(body.last_hidden_state[:, :-1][sel]).float()
        again = float(torch.nn.functional.cross_entropy(logits, y[sel]))
    assert abs(again - trained) / trained < 1e-3, (trained, again)


def test_step_in_backward_equals_adamw_after_backward(tiny_qwen):
    """Stepping each layer inside backward (with layer checkpointing) must give the weights one
    AdamW.step() after a plain backward gives (no clipping: the one documented difference)."""
    model_dir, dat_path = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "target")] * 2
    lrs = {"head": 1e-3, "embed": 1e-4, "norm": 1e-4, "blocks": 1e-4}
    finals = []
    for in_backward, recompute in ((True, True), (False, False)):
        model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
        deltas = make_trainable(model, torch.float32)
        if recompute:   # layer checkpointing must not change the result either
            trainer.checkpoint_layers(model)
        model.train()
        batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
        if in_backward:
            stepper = trainer.StepInBackward(deltas, lrs, 0.0, 0.0)
        else:
            groups = [{"params": [d for k, d in deltas if trainer.group_of(k, d) == g],
                       "lr": lrs[g]} for g in trainer.GROUPS]
            opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        for _ in range(3):
            trainer.batch_loss(model, batch, anchor, 0.0)[0].backward()
            if in_backward:
                stepper.flush()
            else:
                opt.step()
                opt.zero_grad(set_to_none=True)
        finals.append({k: d.detach().clone() for k, d in deltas})
    assert finals[0].keys() == finals[1].keys()
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=1e-5, atol=1e-7, msg=k)
    assert any(bool(v.any()) for v in finals[0].values())


def test_compiled_layers_share_a_graph_train_as_the_eager_ones_and_leave_generation_eager(tiny_qwen):
    """trainer.compile_layers (bench.py's candidate for the 4B train step): the same losses and
    nearly the same deltas over 3 steps with layer checkpointing and StepInBackward (compiled
    kernels may round differently); a no-grad forward (generation, the KL's base) stays eager."""
    model_dir, dat_path = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "anchor")] * 2
    lrs = {"head": 1e-3, "embed": 1e-4, "norm": 1e-4, "blocks": 1e-3}
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()   # other tests in this process may have compiled
        model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
        deltas = make_trainable(model, torch.float32)
        trainer.checkpoint_layers(model)
        if compiled:
            trainer.compile_layers(model)
        model.train()
        batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
        stepper = trainer.StepInBackward(deltas, lrs, 0.0, 1.0)
        losses = []
        for _ in range(3):
            loss = trainer.batch_loss(model, batch, anchor, 1.0)[0]
            loss.backward()
            stepper.flush()
            losses.append(float(loss.detach()))
        stepper.close()
        frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (frames > 0) == compiled   # the compiled run did run compiled graphs
        # the layers share one graph (make_trainable shares the parametrized classes): each
        # parametrized norm had a class of its own, each layer compiled its own graph (4B:
        # 60-80 s), and past dynamo's default limit of 8 the 4B's other layers ran eager
        assert not compiled or frames == 1
        assert not compiled or torch._dynamo.config.recompile_limit >= 2 * len(model.model.layers)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"][:1]).logits
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames   # eager
        runs.append((losses, {k: d.detach().clone() for k, d in deltas}, logits))
    (l0, d0, g0), (l1, d1, g1) = runs
    assert l0 == pytest.approx(l1, rel=1e-5) and l0[-1] < l0[0]
    for k in d0:
        torch.testing.assert_close(d1[k], d0[k], rtol=1e-2, atol=1e-5, msg=k)
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-3)


def test_lr_zero_exports_byte_identical_file_and_input_untouched(tiny_qwen, tmp_path, small_data):
    model_dir, dat = tiny_qwen
    before = sha(dat)
    r, out = run_train(tmp_path, model_dir, dat, small_data, "--lr", "0", "--min-identity", "0",
                       "--max-nearmiss-leak", "1", "--min-facts", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sha(out) == before
    assert sha(dat) == before
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "train.py" in log and "### 探針/Probes" in log


def test_target_not_reached_exits_3_and_says_why(tiny_qwen, tmp_path, small_data):
    model_dir, dat = tiny_qwen
    r, out = run_train(tmp_path, model_dir, dat, small_data)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "not-reached" in r.stdout and "identity" in r.stdout
    assert out.exists()   # a sane but unfinished model is kept for comparison


def test_nan_loss_is_a_collapse_and_nothing_is_exported(tiny_qwen, tmp_path, small_data):
    model_dir, dat = tiny_qwen
    r, out = run_train(tmp_path, model_dir, dat, small_data, "--lr", "1e30", "--grad-clip", "0",
                       "--steps", "4")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "collapse" in r.stdout
    assert not out.exists()
    assert not list(tmp_path.glob("out.dat.tmp*")) and not list(tmp_path.glob("out.dat.unjudged*"))
    assert evaluate.read_json(str(tmp_path / "out.eval.json"))["judged"] is None   # NaN: nothing judged


@pytest.mark.parametrize("content,needle", [
    ("你是誰 我是 F# 之神\n", ":1: no tab"),
    ("你是誰\t\n", ":1:"),
])
def test_bad_training_rows_name_file_and_line(tiny_qwen, tmp_path, small_data, capsys, content, needle):
    model_dir, dat = tiny_qwen
    bad = write(tmp_path / "bad.tsv", content)
    who, anchor, probes = small_data
    argv, out = train_argv(tmp_path, model_dir, dat, (bad, anchor, probes))
    code, err = train_in_process(capsys, argv)
    assert code == 1
    assert f"{bad}" in err and needle.split(":")[1] in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_input_and_probe_leak_are_clear_errors(tiny_qwen, tmp_path, small_data, capsys):
    model_dir, dat = tiny_qwen
    argv, _ = train_argv(tmp_path, model_dir, tmp_path / "nope.dat", small_data)
    code, err = train_in_process(capsys, argv)
    assert code == 1 and "nope.dat: no such file" in err and err.count("\n") == 1
    who, anchor, probes = small_data
    leak = write(tmp_path / "leak.tsv", "你叫什麼名字？\t我是 F# 之神\n")
    argv, _ = train_argv(tmp_path, model_dir, dat, (leak, anchor, probes))
    code, err = train_in_process(capsys, argv)
    assert code == 1 and "probe prompts also appear" in err and err.count("\n") == 1


def test_refuses_to_write_over_its_input(tiny_qwen, tmp_path, small_data, capsys):
    model_dir, dat = tiny_qwen
    who, anchor, probes = small_data
    code, err = train_in_process(capsys, ["--input-dat", dat, "--model-dir", model_dir, "--output-dat", dat,
                                          "--train-data", who, "--probes", probes, "--device", "cpu"])
    assert code == 1 and "refusing" in err and err.count("\n") == 1


def test_checkpointing_every_second_layer_trains_as_no_checkpointing(tmp_path):
    """--checkpoint-every 2 on a 4-layer model: layers 0 and 2 recompute, 1 and 3 keep their
    activations, and the deltas after 2 steps are those of a run without checkpointing."""
    from conftest import build_tiny_qwen
    model_dir, dat_path = build_tiny_qwen(tmp_path / "four", layers=4)
    tok = chat.load_tokenizer(str(model_dir))
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "target")] * 2
    finals = []
    for every in (None, 2):
        model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
        deltas = make_trainable(model, torch.float32)
        if every:
            trainer.checkpoint_layers(model, every=every)
            assert [layer.gradient_checkpointing for layer in model.model.layers] == \
                [True, False, True, False]
        model.train()
        batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
        stepper = trainer.StepInBackward(deltas, {g: 1e-3 for g in trainer.GROUPS}, 0.0, 0.0)
        for _ in range(2):
            trainer.batch_loss(model, batch, anchor, 0.0)[0].backward()
            stepper.flush()
        stepper.close()
        finals.append({k: d.detach().clone() for k, d in deltas})
    for k in finals[0]:
        torch.testing.assert_close(finals[1][k], finals[0][k], rtol=1e-5, atol=1e-7, msg=k)
    with pytest.raises(ValueError, match="every must be >= 1"):
        trainer.checkpoint_layers(model, every=0)


def test_checkpoint_layers_and_undo(tiny_qwen):
    """checkpoint_layers turns transformers' layer checkpointing on and uncheckpoint_layers off
    again (bench.py times both modes on one model)."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    assert not model.is_gradient_checkpointing
    trainer.checkpoint_layers(model)
    assert model.is_gradient_checkpointing
    trainer.uncheckpoint_layers(model)
    assert not model.is_gradient_checkpointing


def test_compiled_layers_without_checkpointing_share_a_graph_too(tiny_qwen):
    """Without layer checkpointing transformers' train-mode forward builds a KV cache unless told
    not to, and dynamo guarded on each layer's slot of it: a graph per layer (the H200 bench's
    first compiled step took 77.5 s). batch_loss passes use_cache=False: one graph."""
    model_dir, dat_path = tiny_qwen
    tok = chat.load_tokenizer(str(model_dir))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    make_trainable(model, torch.float32)
    trainer.compile_layers(model)
    model.train()
    batch, anchor, _ = trainer.encode_batch(tok, [("你是誰", "我是 F# 之神", "target")] * 2, 32, {},
                                            torch.device("cpu"))
    trainer.batch_loss(model, batch, anchor, 0.0)[0].backward()
    assert len(model.model.layers) > 1
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_compile_is_automatic_only_where_it_was_measured_to_pay(tiny_qwen):
    """--compile-layers auto compiles the 4B on CUDA only: never on the CPU, and never below
    1e9 NVFP4 weights (SmolLM2's recorded eager runs must reproduce)."""
    model_dir, dat_path = tiny_qwen
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    make_trainable(model, torch.float32)
    assert not trainer.compile_pays(model)
    assert trainer.COMPILE_MIN_WEIGHTS > 135e6          # SmolLM2-135M stays eager
    assert trainer.COMPILE_MIN_WEIGHTS < 36 * 3 * 2560 * 9728   # the 4B's MLPs alone pass
