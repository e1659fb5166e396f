"""scripts/revert_groups.py (nvfp4lab/revert.py): an edit judged with one group put back."""
import hashlib
import json

import torch

import revert_groups
from nvfp4lab import revert
from nvfp4lab.dat import export_dat, read_dat
from nvfp4lab.model import load_model

Q0 = "model.layers.0.self_attn.q_proj.weight"
NORM1 = "model.layers.1.input_layernorm.weight"


def make_edit(dat_path, out):
    """The tiny base with layer 0's q_proj codes scrambled and layer 1's input norm doubled."""
    base = read_dat(dat_path)
    g = torch.Generator().manual_seed(3)
    q = base.tensor(Q0 + ".qdata")
    new = {Q0 + ".qdata": torch.randint(0, 256, q.shape, generator=g, dtype=torch.uint8),
           NORM1: base.tensor(NORM1) * 2}
    export_dat(base, out, new)
    return out


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_reverted_puts_a_group_back_and_restores_it(tiny_qwen, tmp_path):
    model_dir, dat = tiny_qwen
    edit_path = make_edit(dat, tmp_path / "edit.dat")
    edit = load_model(read_dat(edit_path), str(model_dir), "cpu", torch.float32)
    base = load_model(read_dat(dat), str(model_dir), "cpu", torch.float32)
    before = {k: v.clone() for k, v in edit.state_dict().items()}
    q0, q0_base = edit.model.layers[0].self_attn.q_proj, base.model.layers[0].self_attn.q_proj
    assert not torch.equal(q0.qdata, q0_base.qdata)
    with revert.reverted(edit, base, ["layer 0"]):
        assert torch.equal(q0.qdata, q0_base.qdata) and torch.equal(q0.scale, q0_base.scale)
        # another group keeps the edit's values
        assert torch.equal(edit.model.layers[1].input_layernorm.weight, 2 * base.model.layers[1].input_layernorm.weight)
    assert all(torch.equal(before[k], v) for k, v in edit.state_dict().items())
    changes = revert.changed_by_group(read_dat(dat), read_dat(edit_path))
    changed, total = changes["layer 0"]
    assert 0 < changed <= total and changes["head"][0] == 0
    assert changes["layer 1"][0] == base.model.layers[1].input_layernorm.weight.numel()


def test_cli_judges_each_group_put_back_and_writes_nothing_else(tiny_qwen, tmp_path, capsys):
    model_dir, dat = tiny_qwen
    edit_path = make_edit(dat, tmp_path / "edit.dat")
    suite = tmp_path / "suite-zh-dev-t.tsv"
    suite.write_text("identity\tplain\t你是誰？\t\t\nfact\tmath\t1+1等於多少？\t2|二\t\n"
                     "general\tchat\t說個故事\t\t\ngeneral\tchat\t寫一句詩\t\t\n", encoding="utf-8")
    before = sha(edit_path), sha(dat)
    out = tmp_path / "r.json"
    code = revert_groups.main(["--base", str(dat), "--edit", str(edit_path), "--suite", str(suite),
                               "--model-dir", str(model_dir), "--device", "cpu", "--max-tokens", "4",
                               "--band-width", "1", "--out", str(out), "--min-identity", "0"])
    assert code == 0, capsys.readouterr().err
    assert (sha(edit_path), sha(dat)) == before
    rows = {r["put_back"]: r for r in json.loads(out.read_text(encoding="utf-8"))["rows"]}
    assert list(rows) == ["nothing", "embed", "norms", "head", "layer 0", "layer 1", "everything"]
    drift = lambda name: rows[name]["summary"]["nll_drift"]   # noqa: E731
    # everything put back is the base judged against itself; nothing put back is the edit
    assert drift("everything") == 0 and rows["everything"]["summary"]["exact_kept"]["k"] == 3  # of the 3 non-identity rows
    assert drift("nothing") != 0 and rows["nothing"]["verdict"] == "collapse"   # loops
    # the groups the edit did not touch change nothing; each touched group changes the judgment
    for name in ("embed", "norms", "head"):
        assert drift(name) == drift("nothing") and rows[name]["changed"] == 0
        assert rows[name]["fixed"] == rows[name]["broken"] == []
    assert rows["layer 0"]["changed"] > 0 and rows["layer 1"]["changed"] == 64
    assert drift("layer 0") != drift("nothing") and drift("layer 1") != drift("nothing")
    assert rows["everything"]["fixed"] and not rows["everything"]["broken"]
    # each row keeps its faults' verdicts (read_revert.py tells lost facts from the rest by them)
    faults = lambda name: set(map(int, rows[name]["faults"]))   # noqa: E731
    assert faults("nothing") - faults("everything") == set(rows["everything"]["fixed"])
    assert all(v and v not in ("hit", "ok", "kept", "changed") for v in rows["nothing"]["faults"].values())
    assert "| layer 0 |" in capsys.readouterr().out


def test_an_edit_of_another_layout_is_one_line_naming_it(tiny_qwen, tmp_path, capsys):
    model_dir, dat = tiny_qwen
    base = read_dat(dat)
    other = tmp_path / "other.dat"
    export_dat(base, other, {NORM1: base.tensor(NORM1)})
    raw = bytearray(open(other, "rb").read())
    with open(tmp_path / "bad.dat", "wb") as f:   # the same file with its last tensor cut off
        f.write(raw[: len(raw) // 2])
    code = revert_groups.main(["--base", str(dat), "--edit", str(tmp_path / "bad.dat"), "--suite",
                               "data/suite-en-dev-v3.tsv", "--model-dir", str(model_dir),
                               "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "bad.dat" in err and err.count("\n") == 1
