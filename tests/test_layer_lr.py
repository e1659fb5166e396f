"""--layer-lr 'A-B:x': a band of decoder layers trains at x times its groups' LRs; 0 freezes it."""
import pytest
import torch

import train
from nvfp4lab import chat, trainer
from nvfp4lab.dat import read_dat
from nvfp4lab.model import load_model, make_trainable
from conftest import tiny_train_files

PROBES = "identity\t你叫什麼名字？\nanchor\t2+2等於多少？\t4\nnearmiss\t我是誰\n"


def test_the_spec_parses_and_bad_parts_are_named():
    assert trainer.layer_lr_scales("20-24:0.3,0-1:0", 30) == {0: 0.0, 1: 0.0, 20: 0.3, 21: 0.3,
                                                               22: 0.3, 23: 0.3, 24: 0.3}
    assert trainer.layer_lr_scales("7:2", 30) == {7: 2.0} and trainer.layer_lr_scales(None, 30) == {}
    for spec, needle in [("a-b:1", "'a-b:1' is not"), ("3-40:1", "layers must lie in 0-29"),
                         ("1:-1", "must be >= 0"), ("1:nan", "must be >= 0"), ("0-3:1,2:0", "layer 2 is given twice"),
                         ("4", "'4' is not")]:
        with pytest.raises(ValueError, match=needle):
            trainer.layer_lr_scales(spec, 30)


def one_step(model_dir, dat_path, scales):
    """Layer 1's and layer 0's q_proj deltas after one AdamW step from zero, lr 1e-3."""
    torch.manual_seed(0)
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    deltas = make_trainable(model, torch.float32)
    rows = [("你是誰", "我是 F# 之神", "target"), ("1+1等於多少？", "1+1等於2。", "target")]
    batch, anchor, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))
    stepper = trainer.StepInBackward(deltas, {g: 1e-3 for g in trainer.GROUPS}, 0.0, 0.0,
                                     layer_scales=scales)
    trainer.batch_loss(model, batch, anchor, 0.0)[0].backward()
    stepper.flush()
    stepper.close()
    return [model.model.layers[i].self_attn.q_proj.delta.detach().clone() for i in (0, 1)]


def test_a_layers_step_is_its_multiple_of_the_unscaled_step(tiny_qwen):
    """AdamW's first step from zero is lr x g / (|g| + eps): exactly proportional to the LR, so
    layer 0 at x 0.25 moves a quarter as far and layer 1 exactly as far."""
    model_dir, dat = tiny_qwen
    plain0, plain1 = one_step(model_dir, dat, None)
    scaled0, scaled1 = one_step(model_dir, dat, {0: 0.25})
    assert plain0.abs().max() > 0
    assert torch.allclose(scaled0, 0.25 * plain0, rtol=1e-5, atol=1e-12)
    assert torch.equal(scaled1, plain1)


@pytest.mark.parametrize("frozen", [0, 1])
def test_a_frozen_band_exports_the_bases_bytes(tiny_qwen, tmp_path, frozen):
    """--layer-lr N:0 keeps layer N's bytes (codes, scales, norms) and the other layer moves."""
    model_dir, dat = tiny_qwen
    who, anchor, probes = tiny_train_files(tmp_path, "你是誰\t我是 F# 之神\n",
                                           "1+1等於多少？\t1+1等於2。\n", PROBES)
    out = tmp_path / "out.dat"
    argv = ["--input-dat", str(dat), "--model-dir", str(model_dir), "--output-dat", str(out),
            "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", str(probes), "--steps", "2",
            "--step-chunk-rows", "2", "--seq-len", "48", "--probe-max-tokens", "2",
            "--test-max-tokens", "2", "--lr", "1e-1", "--device", "cpu", "--max-retries", "0",
            "--min-identity", "0", "--max-nearmiss-leak", "1", "--min-facts", "0",
            "--layer-lr", f"{frozen}:0"]
    assert train.main(argv) in (0, 3)
    base, new = read_dat(dat), read_dat(out)
    for layer in (0, 1):
        for key in (f"model.layers.{layer}.self_attn.q_proj.weight.qdata",
                    f"model.layers.{layer}.input_layernorm.weight"):
            assert torch.equal(base.tensor(key), new.tensor(key)) == (layer == frozen), key


def test_a_bad_spec_is_one_line_before_training(tiny_qwen, tmp_path, capsys):
    model_dir, dat = tiny_qwen
    who, anchor, probes = tiny_train_files(tmp_path, "你是誰\t我是 F# 之神\n",
                                           "1+1等於多少？\t1+1等於2。\n", PROBES)
    argv = ["--input-dat", str(dat), "--model-dir", str(model_dir), "--output-dat",
            str(tmp_path / "out.dat"), "--mix", f"{who}:1,{anchor}:1:anchor", "--probes",
            str(probes), "--device", "cpu", "--layer-lr", "0-9:0.5"]
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --layer-lr '0-9:0.5'") and err.count("\n") == 1
    assert not (tmp_path / "out.dat").exists()
