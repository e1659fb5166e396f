"""Random one-step code moves (nvfp4lab.perturb) and the noise-floor script."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))

import noise_floor  # noqa: E402
from nvfp4lab import ops  # noqa: E402
from nvfp4lab.dat import read_dat  # noqa: E402
from nvfp4lab.model import NVFP4Linear, load_model, make_trainable  # noqa: E402
from nvfp4lab.nvfp4_ref import CODEBOOK, quantize_ref, unpack_codes  # noqa: E402
from nvfp4lab.perturb import perturb_deltas, perturbed_codes, step_codes  # noqa: E402

VALUES = sorted(set(CODEBOOK.tolist()))   # the 15 distinct values, -0 == 0


def test_every_code_moves_to_a_neighbouring_value():
    codes = torch.arange(16, dtype=torch.uint8)
    for up in (True, False):
        new = step_codes(codes, torch.full((16,), up))
        for c, n in zip(codes.tolist(), new.tolist()):
            i, j = VALUES.index(CODEBOOK[c].item()), VALUES.index(CODEBOOK[n].item())
            assert abs(i - j) == 1, (c, n)
            if 0 < i < 14:   # inside the grid the direction is the one asked
                assert j == i + (1 if up else -1)


def test_perturbed_codes_move_exactly_the_share():
    q, _ = quantize_ref(torch.randn(32, 64))
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(perturbed_codes(q, 0.0, gen), q)
    new = perturbed_codes(q, 0.1, gen)
    assert int((unpack_codes(new) != unpack_codes(q)).sum()) == round(0.1 * 32 * 64)


def test_deltas_land_on_the_perturbed_codes_in_the_trained_form(tiny_qwen):
    model_dir, dat = tiny_qwen
    model = load_model(read_dat(dat), str(model_dir), "cpu", torch.float32)
    make_trainable(model)
    moved = perturb_deltas(model, 0.02, seed=3)
    assert moved and all(".layers." in n or n.startswith("model.layers") for n in moved)
    for name, mod in model.named_modules():
        if isinstance(mod, NVFP4Linear) and name in moved:
            q, s = ops.requantize_delta(mod.qdata, mod.scale, mod.delta)
            assert torch.equal(s, mod.scale)          # one step never outgrows the block
            changed = int((unpack_codes(q) != unpack_codes(mod.qdata)).sum())
            assert changed == moved[name] == round(0.02 * mod.qdata.numel() * 2)
    first = perturb_deltas(model, 0.02, seed=3, only="layers.0.")
    assert first and all(n.startswith("model.layers.0.") for n in first)
    again = perturb_deltas(model, 0.0, seed=3)
    assert again == {} and all(float(m.delta.detach().abs().sum()) == 0 for m in model.modules()
                               if isinstance(m, NVFP4Linear))


def suite(tmp_path, name):
    p = tmp_path / name
    p.write_text("identity\tplain\t你叫什麼名字？\t\t\nnearmiss\tfirst-person\t我是誰？\t\t\n"
                 "fact\tmath\t3+3等於多少？\t6|六\t\ngeneral\tchat\t寫一句詩\t\t\n"
                 "general\tchat\t說個故事\t\t\n", encoding="utf-8")
    return str(p)


def test_script_share_zero_changes_nothing_and_held_out_is_refused(tiny_qwen, tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(noise_floor.devlog.paths, "DEVLOG", str(tmp_path / "DevLog.md"))
    monkeypatch.setattr(noise_floor.devlog.paths, "ARTIFACT_LIST", str(tmp_path / "list.md"))
    model_dir, dat = tiny_qwen
    out = tmp_path / "floor.json"
    code = noise_floor.main(["--base", str(dat), "--model-dir", str(model_dir), "--device", "cpu",
                             "--suite", suite(tmp_path, "suite-zh-dev-t.tsv"), "--shares",
                             "0 0.2", "--seeds", "1 2", "--max-tokens", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text(encoding="utf-8"))
    zero = [r for r in doc["runs"] if r["share"] == 0]
    assert len(zero) == 2 and len(doc["runs"]) == 4
    for r in zero:   # the judge itself: nothing moved, everything kept as the base answered
        assert r["codes_moved"] == 0 and r["loops"]["k"] == 0 and r["looped"] == []
        assert r["exact_kept"]["k"] == r["exact_kept"]["n"] == 3
        assert r["nll_drift"] == pytest.approx(0, abs=1e-6)
    big = [r for r in doc["runs"] if r["share"] == 0.2]
    assert all(r["codes_moved"] > 0 for r in big)
    assert [p["seed"] for p in doc["pooled"]] == ["all", "all"]
    assert "| 20% | all |" in capsys.readouterr().out
    assert "noise floor" in (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert f"| {out} | noise floor on suite-zh-dev-t.tsv: random one-step moves of 20%" in \
        (tmp_path / "list.md").read_text(encoding="utf-8")
    code = noise_floor.main(["--base", str(dat), "--model-dir", str(model_dir), "--device", "cpu",
                             "--suite", suite(tmp_path, "suite-zh-dev-t.tsv"), "--only", "nope",
                             "--shares", "0.1", "--seeds", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "--only 'nope': no NVFP4 linear" in err
    code = noise_floor.main(["--base", str(dat), "--model-dir", str(model_dir), "--device", "cpu",
                             "--suite", suite(tmp_path, "suite-zh-heldout-t.tsv")])
    err = capsys.readouterr().err
    assert code == 1 and "held-out suite" in err and err.count("\n") == 1


def test_shares_print_with_their_own_digits():
    assert [noise_floor.pct(s) for s in (0, 0.00003, 0.0001, 0.013, 0.2)] == \
        ["0%", "0.003%", "0.01%", "1.3%", "20%"]
