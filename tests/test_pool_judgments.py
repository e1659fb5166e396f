"""scripts/pool_judgments.py: groups of kept judgments pooled and ranked per run."""
import json
from pathlib import Path

import pool_judgments  # scripts/ is on sys.path (conftest)
from test_sweep import judged_doc

ROUND_31 = Path(__file__).resolve().parents[1] / "artifacts" / "rounds" / "r31"


def test_round_31s_kept_judgments_pool_and_choose_as_its_sweep_did(capsys):
    """The device's sweep chose u1 over u0 (6 criteria missed each, mean score +0.785 against
    +0.771) and u2 (10 missed); pooled here from the kept judgments the same."""
    groups = [f"{v}={ROUND_31}/sweep-{v}-*.eval.json" for v in ("u0", "u1", "u2")]
    assert pool_judgments.main(groups) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("chosen: u1")
    assert "| u1 | `(recipe)` | 0/3 | 6 | +0.785 | 290/318 0.91 [0.88, 0.94] |" in out
    assert "u2: 3 runs, 0 reached, 10 criteria missed (3.33 a run)" in out


def write(tmp_path, name, doc) -> None:
    (tmp_path / f"{name}.eval.json").write_text(json.dumps(doc), encoding="utf-8")


def test_groups_of_different_sizes_are_compared_per_run(tmp_path, capsys):
    """Three single runs missing one criterion each (3 in all) against one merge missing two:
    summed, the merge would win (2 < 3); per run the singles do (1 < 2). A tie keeps the group
    named first."""
    for s in (1, 2, 3):
        write(tmp_path, f"single-s{s}", judged_doc(facts=(13, 16)))              # facts: 1 miss
    write(tmp_path, "soup-s1", judged_doc(facts=(13, 16), loops=(1, 400)))        # facts + loops
    assert pool_judgments.main([f"single={tmp_path}/single-*", f"soup={tmp_path}/soup-*"]) == 0
    out = capsys.readouterr().out
    assert "soup: 1 runs, 0 reached, 2 criteria missed (2.00 a run)" in out
    assert out.rstrip().endswith("chosen: single")
    write(tmp_path, "soup-s4", judged_doc(facts=(16, 16)))                        # 0 misses
    assert pool_judgments.main([f"single={tmp_path}/single-*", f"soup={tmp_path}/soup-*"]) == 0
    # both groups now miss 1.00 a run, and the soup's mean score is higher (more facts kept)
    assert capsys.readouterr().out.rstrip().endswith("chosen: soup")
    rows = json.loads(_json(tmp_path, capsys, "soup", "single"))
    assert [(r["name"], r["misses"] / len(r["runs"])) for r in rows] == [("soup", 1.0), ("single", 1.0)]
    assert rows[0]["score"] > rows[1]["score"]


def _json(tmp_path, capsys, *order) -> str:
    assert pool_judgments.main([f"{g}={tmp_path}/{g}-*" for g in order] + ["--json"]) == 0
    return capsys.readouterr().out


def test_a_reached_run_outranks_any_number_of_misses(tmp_path, capsys):
    write(tmp_path, "a-s1", judged_doc(facts=(13, 16)))
    write(tmp_path, "b-s1", judged_doc("success", facts=(16, 16)))
    write(tmp_path, "b-s2", judged_doc(identity=(10, 100), facts=(1, 16), loops=(9, 400)))
    assert pool_judgments.main([f"a={tmp_path}/a-*", f"b={tmp_path}/b-*"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("chosen: b")


def test_a_glob_matching_nothing_is_one_line_and_exit_1(tmp_path, capsys):
    assert pool_judgments.main([f"a={tmp_path}/none-*.eval.json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none-*.eval.json: no judgment matches" in err[0]
    assert pool_judgments.main(["no-equals-sign"]) == 1
    assert "give NAME=GLOB" in capsys.readouterr().err


def test_a_tie_keeps_the_group_named_first(tmp_path, capsys):
    for g in ("x", "y"):
        write(tmp_path, f"{g}-s1", judged_doc(facts=(13, 16)))
    for order in (("x", "y"), ("y", "x")):
        assert pool_judgments.main([f"{g}={tmp_path}/{g}-*" for g in order]) == 0
        assert capsys.readouterr().out.rstrip().endswith(f"chosen: {order[0]}")
