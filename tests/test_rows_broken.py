"""scripts/rows_broken.py: which suite rows a study's runs broke, from kept judgments."""
import json

import rows_broken
from conftest import ROOT

KEPT = sorted(str(p) for p in ROOT.glob("artifacts/rounds/r2[78]/sweep-*.eval.json"))


def test_counts_add_up_to_each_runs_summary_and_name_the_rows(capsys):
    """Over round 27's seed 12 and round 28's seed 13 (8 dev runs) the per-row counts add up to
    the runs' own facts lost, loops added, leaks and greeting intros; the stop-sign fact is lost
    in all 8 (doc/METHOD.md "Round 28")."""
    assert len(KEPT) == 8
    suite, per_line = rows_broken.count(KEPT)
    assert suite == "data/suite-en-dev-v3.tsv"
    total = {b: sum(c[b] for c in per_line.values()) for b in rows_broken.BREAKS}
    docs = [json.loads(open(p, encoding="utf-8").read())["summary"] for p in KEPT]
    assert total["fact lost"] == sum(s["facts_kept"]["n"] - s["facts_kept"]["k"] for s in docs)
    assert total["loop added"] == sum(s["loops"]["k"] for s in docs)
    assert total["leak"] == sum(s["nearmiss_leak"]["k"] + s["context_leak"]["k"] for s in docs)
    assert total["intro"] == sum(s["greeting_intro"]["k"] for s in docs)
    assert rows_broken.main(KEPT) == 0
    out = capsys.readouterr().out
    assert "| 352 | fact | What colour is a stop sign? | 8 | 3 | 0 | 0 |" in out


def test_a_judgment_without_row_verdicts_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "sweep-a-s1.eval.json"
    bad.write_text(json.dumps({"verdict": "success", "summary": {}}), encoding="utf-8")
    assert rows_broken.main([KEPT[0], str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "row_verdicts" in err[0]
