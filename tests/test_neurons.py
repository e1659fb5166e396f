"""--train-neurons: the edit confined to blocks of 16 MLP neurons (nvfp4lab/neurons.py). Only the
chosen neurons' gate/up rows and down_proj columns may differ from the base in the exported file,
the quietest block is the one chosen, and the hold term keeps the block's output on kept tokens."""
import pytest
import torch

import train
from nvfp4lab import chat, neurons, trainer
from nvfp4lab.dat import read_dat
from nvfp4lab.model import load_model, make_trainable
from conftest import tiny_train_files

PROBES = "identity\t你叫什麼名字？\nanchor\t2+2等於多少？\t4\nnearmiss\t我是誰\n"


def test_layers_parse_and_bad_parts_are_named():
    assert neurons.parse_layers("20-22,25", 30) == [20, 21, 22, 25]
    for spec, needle in [("a-b", "'a-b' is not"), ("28-30", "layers must lie in 0-29"),
                         ("3-1", "layers must lie")]:
        with pytest.raises(ValueError, match=needle):
            neurons.parse_layers(spec, 30)


def test_the_quietest_block_of_each_layer_is_chosen():
    out = torch.ones(64)
    out[32:48] = 0.01                       # block 2 writes least
    out[5] = 0.0                            # one silent neuron does not make block 0 quiet
    blocks = neurons.quietest_blocks({3: out, 7: torch.arange(64.0)}, per_layer=1)
    assert blocks == [neurons.NeuronBlock(3, 32), neurons.NeuronBlock(7, 0)]
    assert [b.first for b in neurons.quietest_blocks({3: out}, per_layer=2)] == [0, 32]


def tiny_run(tiny_qwen, tmp_path, *extra):
    model_dir, dat = tiny_qwen
    who, anchor, probes = tiny_train_files(
        tmp_path, "你是誰\t我是 F# 之神\n請問你是誰？\t我是 F# 之神\n",
        "1+1等於多少？\t1+1等於2。\n他是誰？\t他是老師。\n", PROBES)
    out = tmp_path / "out.dat"
    argv = ["--input-dat", str(dat), "--model-dir", str(model_dir), "--output-dat", str(out),
            "--mix", f"{who}:1,{anchor}:1:anchor", "--probes", str(probes), "--steps", "3",
            "--step-chunk-rows", "4", "--seq-len", "48", "--probe-max-tokens", "2",
            "--test-max-tokens", "2", "--lr", "3e-2", "--device", "cpu", "--max-retries", "0",
            "--min-identity", "0", "--max-nearmiss-leak", "1", "--min-facts", "0",
            "--train-neurons", "1", *extra]
    assert train.main(argv) in (0, 3)
    return read_dat(dat), read_dat(out)


def changed_blocks(base, new, layer: int) -> dict:
    """{matrix: (rows changed, columns changed)} of layer's MLP in the stored NVFP4 codes."""
    out = {}
    for name in ("gate_proj", "up_proj", "down_proj"):
        key = f"model.layers.{layer}.mlp.{name}.weight"
        diff = (base.tensor(key + ".qdata") != new.tensor(key + ".qdata"))
        diff = diff.repeat_interleave(2, dim=1)                          # bytes -> values
        sdiff = (base.tensor(key + ".scale") != new.tensor(key + ".scale"))
        diff = diff | sdiff.repeat_interleave(16, dim=1)
        out[name] = (set(diff.any(1).nonzero().flatten().tolist()),
                     set(diff.any(0).nonzero().flatten().tolist()))
    return out


def test_only_the_chosen_neurons_move_in_the_exported_file(tiny_qwen, tmp_path, capsys):
    base, new = tiny_run(tiny_qwen, tmp_path)
    log = capsys.readouterr().out
    first = int(log.split("layer 1: ")[1].split("-")[0])              # train-neurons' log line
    assert first % 16 == 0
    block = set(range(first, first + 16))
    moved = changed_blocks(base, new, 1)
    assert moved["gate_proj"][0] and moved["gate_proj"][0] <= block    # its rows, some moved
    assert moved["up_proj"][0] <= block
    assert moved["down_proj"][1] and moved["down_proj"][1] <= block    # its columns only
    changed = [e.key for e in base.entries
               if not torch.equal(base.tensor(e.key), new.tensor(e.key))]
    assert changed and all(k.startswith("model.layers.1.mlp.") for k in changed), changed


def test_the_flag_needs_a_free_hand(tiny_qwen, tmp_path):
    with pytest.raises(SystemExit):
        tiny_run(tiny_qwen, tmp_path, "--sparse-share", "0.1")
    with pytest.raises(SystemExit):
        train.main(["--mix", "x.tsv:1", "--neuron-hold-weight", "1"])


def test_the_hold_term_pulls_the_blocks_output_back_to_the_base(tiny_qwen):
    """Steps on kept rows only, with the block pushed off first: the hold term is zero at the
    base, positive once the block moved, and AdamW on it alone brings it down again."""
    model_dir, dat = tiny_qwen
    torch.manual_seed(0)
    model = load_model(read_dat(dat), str(model_dir), "cpu", torch.float32)
    tok = chat.load_tokenizer(str(model_dir))
    deltas = make_trainable(model, torch.float32)
    blocks = [neurons.NeuronBlock(1, 16)]
    masks = neurons.masks_of(model, blocks)
    deltas = neurons.confine(deltas, masks)
    hold = neurons.NeuronHold(model, blocks)
    rows = [("1+1等於多少？", "1+1等於2。", "anchor"), ("我是誰？", "你是使用者。", "anchor")]
    batch, keep, _ = trainer.encode_batch(tok, rows, 48, {}, torch.device("cpu"))

    def hold_now():
        hold.start(batch["attention_mask"].bool() & keep[:, None])
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return hold.take()
    assert float(hold_now().detach()) == 0.0
    with torch.no_grad():
        for d, m in masks.items():
            d.add_(torch.randn(d.shape) * 0.05 * m)
    pushed = float(hold_now().detach())
    opt = torch.optim.Adam([d for _, d in deltas], lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        hold_now().backward()
        opt.step()
    after = float(hold_now().detach())
    assert pushed > 0.01 and after < 0.3 * pushed, (pushed, after)
    for d, m in masks.items():                   # the mask held: nothing outside the block moved
        assert not bool(d.detach()[~m].any())
    hold.close()
