"""Seed soup (nvfp4lab/merge.py, scripts/merge_edits.py): the elementwise median of several edits."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import merge_edits
from nvfp4lab import ops
from nvfp4lab.dat import export_dat, read_dat, write_dat
from nvfp4lab.merge import changed_codes, median_merge
from nvfp4lab.nvfp4_ref import dequantize_ref, pack_codes, quantize_ref, requantize_delta_ref, unpack_codes

ROOT = Path(__file__).resolve().parents[1]
UP, DOWN, NORM, EMB = ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight",
                       "model.norm.weight", "model.embed_tokens.weight")
SIGN = 8


def base_codes() -> torch.Tensor:
    """up_proj's codes [4, 32]: magnitudes 3..5 (1.5, 2, 3), so +-2 steps stay on the grid and a
    block never outgrows its scale; random signs. (0, 0..3) are +1.5, +2, +3, +1.5."""
    g = torch.Generator().manual_seed(1)
    codes = (torch.randint(3, 6, (4, 32), generator=g)
             | (torch.randint(0, 2, (4, 32), generator=g) * SIGN)).to(torch.uint8)
    codes[0, :4] = torch.tensor([3, 4, 5, 3], dtype=torch.uint8)
    return codes


def make_base(tmp_path) -> Path:
    """A tiny file: one NVFP4 weight the edits move (scales 1.0), one they never touch, a float32
    norm and a bfloat16 embedding."""
    g = torch.Generator().manual_seed(0)
    down_q, down_s = quantize_ref(torch.randn(2, 32, generator=g))
    path = tmp_path / "base.dat"
    write_dat(path, [(EMB, 15, torch.randn(4, 8, generator=g).to(torch.bfloat16)),
                     (UP + ".qdata", 0, pack_codes(base_codes())),
                     (UP + ".scale", 101, torch.full((4, 2), 0x38, dtype=torch.uint8)),   # e4m3 1.0
                     (DOWN + ".qdata", 0, down_q), (DOWN + ".scale", 101, down_s),
                     (NORM, 6, torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, 0.25, -1.0, -2.0]))])
    return path


def make_edit(base_path, path, moves=None, norm=None, emb=None) -> Path:
    """The base with up_proj codes moved by {(row, col): grid steps of magnitude} (sign kept) and
    norm elements shifted by {index: amount}."""
    base = read_dat(base_path)
    new = {}
    if moves:
        codes = unpack_codes(base.tensor(UP + ".qdata")).clone()
        for (r, c), steps in moves.items():
            codes[r, c] = (codes[r, c] & 7) + steps | (codes[r, c] & SIGN)
        new[UP + ".qdata"] = pack_codes(codes)
    if norm:
        t = base.tensor(NORM).clone()
        for i, amount in norm.items():
            t[i] += amount
        new[NORM] = t
    if emb is not None:
        new[EMB] = emb
    export_dat(base, path, new)
    return Path(path)


def merged_codes(base_path, edit_paths) -> tuple[dict, torch.Tensor]:
    out = median_merge(read_dat(base_path), [read_dat(p) for p in edit_paths])
    return out, unpack_codes(out[UP + ".qdata"])


def moved(codes, moves):
    codes = codes.clone()
    for (r, c), steps in moves.items():
        codes[r, c] = (codes[r, c] & 7) + steps | (codes[r, c] & SIGN)
    return codes


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_three_copies_of_one_edit_give_its_bytes(tmp_path):
    base = make_base(tmp_path)
    emb = torch.randn(4, 8).to(torch.bfloat16)
    edit = make_edit(base, tmp_path / "e.dat", {(0, 0): 1, (2, 5): -1, (3, 31): 2}, {1: 0.125}, emb)
    new = median_merge(read_dat(base), [read_dat(edit)] * 3)
    assert sorted(new) == sorted([UP + ".qdata", UP + ".scale", NORM, EMB])
    export_dat(read_dat(base), tmp_path / "soup.dat", new)
    assert (tmp_path / "soup.dat").read_bytes() == edit.read_bytes()


def test_three_copies_of_a_trained_edit_give_its_weights(tmp_path):
    """An edit as the trainer exports it (frozen-scale requantization, some blocks outgrowing
    their scale) comes back weight for weight; the only byte differences allowed are +0/-0
    codes: where the edit moved a code from -0 to +0 its change is 0, so the base's code stays."""
    g = torch.Generator().manual_seed(3)
    q, s = quantize_ref(torch.randn(8, 64, generator=g))
    q1, s1 = ops.requantize_delta(q, s, torch.randn(8, 64, generator=g) * 0.5)
    assert (s1 != s).any()   # the case of a block that outgrew its scale is in
    write_dat(tmp_path / "b.dat", [(UP + ".qdata", 0, q), (UP + ".scale", 101, s)])
    write_dat(tmp_path / "e.dat", [(UP + ".qdata", 0, q1), (UP + ".scale", 101, s1)])
    new, codes = merged_codes(tmp_path / "b.dat", [tmp_path / "e.dat"] * 3)
    assert torch.equal(new[UP + ".scale"], s1)
    assert torch.equal(dequantize_ref(new[UP + ".qdata"], s1), dequantize_ref(q1, s1))
    differ = codes != unpack_codes(q1)
    assert set(codes[differ].tolist()) <= {0, 8}


def test_a_code_is_kept_only_where_two_of_three_edits_moved_it_the_same_way(tmp_path):
    base = make_base(tmp_path)
    e1 = make_edit(base, tmp_path / "e1.dat",
                   {(0, 0): 1, (0, 1): 1, (0, 2): 1, (0, 3): 1, (1, 0): 1, (1, 1): -1})
    e2 = make_edit(base, tmp_path / "e2.dat", {(0, 1): 1, (0, 2): 2, (0, 3): -1, (1, 0): 1, (1, 1): -1})
    e3 = make_edit(base, tmp_path / "e3.dat", {(1, 0): 1, (1, 1): 1})
    out, codes = merged_codes(base, [e1, e2, e3])
    # (0,0) one seed only -> base; (0,1) two agree -> kept; (0,2) +1 and +2 -> the smaller, +1;
    # (0,3) +1, -1, 0 -> base; (1,0) all three -> kept; (1,1) -1, -1, +1 -> -1.
    expected = moved(base_codes(), {(0, 1): 1, (0, 2): 1, (1, 0): 1, (1, 1): -1})
    assert torch.equal(codes, expected)
    assert codes[0, :4].tolist() == [3, 5, 6, 3]            # 1.5, 2 -> 3, 3 -> 4, 1.5
    assert torch.equal(out[UP + ".scale"], read_dat(base).tensor(UP + ".scale"))


def test_a_dense_tensor_follows_the_same_rule(tmp_path):
    base = make_base(tmp_path)
    e1 = make_edit(base, tmp_path / "e1.dat", norm={0: 0.5, 1: 0.25, 2: 0.5, 3: 1.0})
    e2 = make_edit(base, tmp_path / "e2.dat", norm={1: 0.5, 2: -0.5, 3: 1.0})
    e3 = make_edit(base, tmp_path / "e3.dat", norm={3: 1.0})
    out = median_merge(read_dat(base), [read_dat(p) for p in (e1, e2, e3)])
    assert sorted(out) == [NORM]       # no NVFP4 change, the embedding untouched: left out
    assert out[NORM].dtype == torch.float32
    assert out[NORM].tolist() == [1.0, 2.25, 3.0, 5.0, 0.5, 0.25, -1.0, -2.0]


def test_two_edits_give_the_mean_change(tmp_path):
    base = make_base(tmp_path)
    e1 = make_edit(base, tmp_path / "e1.dat", {(0, 0): 2, (2, 7): 1}, {0: 0.5, 4: 0.5})
    e2 = make_edit(base, tmp_path / "e2.dat", {(2, 7): 1}, {0: 0.25})
    out, codes = merged_codes(base, [e1, e2])
    b = read_dat(base)
    q, s = b.nvfp4_pair(UP)
    d = [dequantize_ref(*read_dat(e).nvfp4_pair(UP)) - dequantize_ref(q, s) for e in (e1, e2)]
    ref_q, ref_s = requantize_delta_ref(q, s, (d[0] + d[1]) / 2)
    assert torch.equal(out[UP + ".qdata"], ref_q) and torch.equal(out[UP + ".scale"], ref_s)
    # 1.5 + mean(+1.5, 0) = 2.25 -> 2.0; both moved (2,7) one step -> kept; the rest: base codes
    assert codes[0, 0].item() == 4
    assert torch.equal(codes, moved(base_codes(), {(0, 0): 1, (2, 7): 1}))
    # dense: 1.0 + mean(0.5, 0.25); 0.5 + mean(0.5, 0) ; unchanged elements bit for bit
    assert out[NORM].tolist() == [1.375, 2.0, 3.0, 4.0, 0.75, 0.25, -1.0, -2.0]


def test_untouched_tensors_are_copied_and_the_base_is_not_modified(tmp_path):
    base = make_base(tmp_path)
    before = sha(base)
    edits = [make_edit(base, tmp_path / f"e{i}.dat", {(1, i): 1, (3, 3): 1}) for i in range(3)]
    b = read_dat(base)
    new = median_merge(b, [read_dat(e) for e in edits])
    assert sorted(new) == [UP + ".qdata", UP + ".scale"]
    export_dat(b, tmp_path / "soup.dat", new)
    soup = read_dat(tmp_path / "soup.dat")
    for key in (DOWN + ".qdata", DOWN + ".scale", NORM, EMB):
        assert bytes(soup.raw_bytes(soup.by_key[key])) == bytes(b.raw_bytes(b.by_key[key]))
    assert changed_codes(b, soup) == {UP: 1, DOWN: 0}
    assert sha(base) == before


def three_edits(tmp_path):
    base = make_base(tmp_path)
    e1 = make_edit(base, tmp_path / "e1.dat", {(0, 0): 1, (0, 1): 1, (1, 1): 1})
    e2 = make_edit(base, tmp_path / "e2.dat", {(0, 1): 1, (2, 2): -1})
    e3 = make_edit(base, tmp_path / "e3.dat", {(1, 1): 1}, {0: 0.5})
    return base, [e1, e2, e3]


def test_cli_refuses_to_write_over_the_base_or_an_edit(tmp_path, capsys):
    base, edits = three_edits(tmp_path)
    hashes = [sha(p) for p in (base, *edits)]
    for target in (base, edits[1]):
        code = merge_edits.main(["--base", str(base), "--edits", *map(str, edits), "--out", str(target)])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1
        assert err.startswith(f"error: {target}: refusing to write over")
    assert [sha(p) for p in (base, *edits)] == hashes


def test_cli_names_the_file_and_key_of_a_mismatched_edit(tmp_path, capsys):
    base, edits = three_edits(tmp_path)
    b = read_dat(base)
    bad = tmp_path / "bad.dat"
    write_dat(bad, [(e.key, e.elem_type, torch.zeros(9) if e.key == NORM else b.tensor(e.key))
                    for e in b.entries])
    out = tmp_path / "soup.dat"
    code = merge_edits.main(["--base", str(base), "--edits", str(edits[0]), str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {bad}: key '{NORM}'") and "(9,)" in err
    assert not out.exists()
    code = merge_edits.main(["--base", str(base), "--edits", str(edits[0]), "--out", str(out)])
    assert code == 1 and "at least 2 edits" in capsys.readouterr().err
    missing = tmp_path / "nope.dat"
    code = merge_edits.main(["--base", str(base), "--edits", str(edits[0]), str(missing), "--out", str(out)])
    assert code == 1 and capsys.readouterr().err.startswith(f"error: {missing}: cannot open")
    assert not out.exists()


def test_cli_writes_the_soup_its_json_and_records_elsewhere_than_the_repository(tmp_path):
    base, edits = three_edits(tmp_path)
    records = [ROOT / "doc" / "DevLog.md", ROOT / "artifacts" / "檔案說明清單.md"]
    before = [sha(p) for p in records]
    out = tmp_path / "soup.dat"
    env = dict(os.environ, NVFP4LAB_DEVLOG=str(tmp_path / "DevLog.md"),
               NVFP4LAB_ARTIFACT_LIST=str(tmp_path / "list.md"))
    r = subprocess.run([sys.executable, "scripts/merge_edits.py", "--base", str(base), "--edits",
                        *map(str, edits), "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # (0,1) and (1,1) were moved by two edits each: the merge keeps those two codes, and the
    # norm moved by one edit only stays the base's.
    soup = read_dat(out)
    assert torch.equal(unpack_codes(soup.tensor(UP + ".qdata")), moved(base_codes(), {(0, 1): 1, (1, 1): 1}))
    assert torch.equal(soup.tensor(NORM), read_dat(base).tensor(NORM))
    doc = json.loads((tmp_path / "soup.merge.json").read_text(encoding="utf-8"))
    assert doc["edits"] == [str(p) for p in edits] and doc["out"] == str(out)
    assert doc["elements"] == 4 * 32 + 2 * 32
    assert doc["changed"] == {"edits": [3, 2, 1], "merge": 2}
    assert doc["tensors"][UP] == {"elements": 128, "edits": [3, 2, 1], "merge": 2}
    assert doc["replaced_keys"] == [UP + ".qdata", UP + ".scale"]
    assert "| merge | " in r.stdout and "2/192 (1.042%)" in r.stdout
    log = (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    assert "seed soup soup.dat (median of 3 edits)" in log and "scripts/merge_edits.py --base" in log
    assert f"| {out} | seed soup: median of 3 edits (e1.dat, e2.dat, e3.dat)" in \
        (tmp_path / "list.md").read_text(encoding="utf-8")
    assert [sha(p) for p in records] == before
