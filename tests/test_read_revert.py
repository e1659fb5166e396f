"""scripts/read_revert.py (nvfp4lab/revert_rule.py): round 34's reading rule and round 35's grid."""
import json

import read_revert
import sweep
from nvfp4lab import revert_rule

LOST = "changed (fact lost)"
PARTS = ["embed", "norms", "head", "layers 0-4", "layers 5-9"]


def seed_doc(identity: int, lost: list[int], parts: dict, collapse: bool = False) -> dict:
    """A revert_groups.py JSON: the run loses `lost` facts with `identity` rows; parts maps a
    part to (facts still lost there, identity rows there); unlisted parts equal the run."""
    def row(label, still_lost, ident, verdict="not-reached"):
        faults = {str(line): LOST for line in still_lost}
        faults["7"] = "LEAK"            # a near-miss leak everywhere: not a fact, never counted
        return {"put_back": label, "verdict": verdict, "faults": faults,
                "summary": {"identity": {"k": ident, "n": 106}}}
    rows = [row("nothing", lost, identity, "collapse" if collapse else "not-reached")]
    rows += [row(p, *parts.get(p, (lost, identity))) for p in PARTS]
    rows.append(row("everything", [], 0))
    return {"rows": rows}


def write(tmp_path, docs) -> list[str]:
    paths = []
    for i, d in enumerate(docs):
        paths.append(str(tmp_path / f"sweep-d0-v19-s{37 + i}.revert.json"))
        open(paths[-1], "w").write(json.dumps(d))
    return paths


def grid_file(tmp_path) -> str:
    g = tmp_path / "r34.sweep"
    g.write_text("# header\nd0-v19\t--lr-head 3e-4 --lr 5e-4 --lr 7e-4 --steps 240\n")
    return str(g)


def test_a_band_that_restores_the_facts_and_keeps_the_identity_becomes_round_35(tmp_path):
    docs = [
        # layers 5-9 restore 2 of 3 and 1 of 2 lost facts at no identity cost; the head restores
        # them too but costs 12 and 15 identity rows: it holds both
        seed_doc(95, [352, 365, 368], {"layers 5-9": ([368], 94), "head": ([], 83)}),
        seed_doc(93, [365, 368], {"layers 5-9": ([368], 93), "head": ([], 78)}),
        # one seed where the band restores less than half: it still holds in two of three
        seed_doc(90, [352, 365, 368, 372], {"layers 5-9": ([365, 368, 372], 90), "head": ([], 89)}),
    ]
    out = tmp_path / "r35.sweep"
    code = read_revert.main([*write(tmp_path, docs), "--control", grid_file(tmp_path) + ":d0-v19",
                             "--grid-out", str(out), "--out", str(tmp_path / "reading.json")])
    assert code == 0
    rows = sweep.read_variants(str(out))
    base = "--lr-head 3e-4 --lr 5e-4 --lr 7e-4 --steps 240"
    assert rows == [("e0-v19", base), ("e1-layers5-9-x0.3", base + " --layer-lr 5-9:0.3"),
                    ("e2-layers5-9-x0", base + " --layer-lr 5-9:0")]
    reading = json.loads((tmp_path / "reading.json").read_text())
    parts = {p["part"]: p for p in reading["parts"]}
    assert reading["picked"] == "layers 5-9"
    assert parts["layers 5-9"]["facts_seeds"] == 2 and not parts["layers 5-9"]["holds_identity"]
    assert parts["head"]["holds_facts"] is False      # restores all, but 12 and 15 rows below
    assert parts["head"]["holds_identity"] and parts["head"]["identity_seeds"] == 2
    assert parts["embed"]["restored"] == 0 and not parts["embed"]["holds_facts"]


def test_one_seed_is_not_enough_and_a_part_holding_both_gives_no_grid(tmp_path, capsys):
    docs = [seed_doc(95, [352, 365], {"layers 0-4": ([], 95), "head": ([], 80)}),
            seed_doc(95, [352, 365], {"head": ([], 80)}),
            seed_doc(95, [352, 365], {"head": ([352], 84)})]
    out = tmp_path / "r35.sweep"
    code = read_revert.main([*write(tmp_path, docs), "--control", grid_file(tmp_path) + ":d0-v19",
                             "--grid-out", str(out)])
    assert code == 0 and not out.exists()
    assert "no part holds the lost facts without the identity" in capsys.readouterr().out


def test_the_head_and_embed_knobs_scale_the_rows_own_lr():
    words = ["--lr", "3e-4", "--lr-head", "1e-3", "--lr-head", "3e-4", "--lr", "7e-4"]
    rows = revert_rule.round_grid("head", "e0", "--x 1", words)
    assert [f for _, f in rows] == ["--x 1", "--x 1 --lr-head 9e-05", "--x 1 --lr-head 0"]
    assert revert_rule.knob("embed", words, 0.3) == "--lr-embed 0.00021"
    assert revert_rule.knob("layer 7", words, 0) == "--layer-lr 7-7:0"
    assert revert_rule.round_grid("norms", "e0", "", words) is None   # no knob for the final norm


def test_a_collapsed_seed_is_not_read_and_a_seed_without_lost_facts_cannot_count(tmp_path):
    seeds = [revert_rule.read_seed(seed_doc(95, [352], {"embed": ([], 95)}, collapse=True)),
             revert_rule.read_seed(seed_doc(95, [], {})),
             revert_rule.read_seed(seed_doc(95, [352], {"embed": ([], 95)}))]
    assert seeds[0] is None
    embed = {p["part"]: p for p in revert_rule.holds(seeds)}["embed"]
    assert embed["facts_seeds"] == 1 and not embed["holds_facts"]


def test_a_judgment_without_faults_is_one_line_naming_it(tmp_path, capsys):
    old = tmp_path / "old.revert.json"
    old.write_text(json.dumps({"rows": [{"put_back": "nothing", "summary": {}}]}))
    code = read_revert.main([str(old), "--control", grid_file(tmp_path) + ":d0-v19"])
    err = capsys.readouterr().err
    assert code == 1 and "old.revert.json" in err and err.count("\n") == 1
    code = read_revert.main([str(tmp_path / "gone.json"), "--control", grid_file(tmp_path) + ":d0-v19"])
    err = capsys.readouterr().err
    assert code == 1 and "gone.json" in err and err.count("\n") == 1
