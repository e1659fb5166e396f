"""scripts/rows_broken.py: which suite rows a study's runs broke, from kept judgments."""
import json

import rows_broken
from conftest import ROOT

# round 27's seed 12 and round 28's seed 13: what METHOD's "Round 28" counted (r28 holds 14-15 too)
KEPT = sorted(str(p) for p in [*ROOT.glob("artifacts/rounds/r27/sweep-*.eval.json"),
                               *ROOT.glob("artifacts/rounds/r28/sweep-*-s13.eval.json")])


def test_counts_add_up_to_each_runs_summary_and_name_the_rows(capsys):
    """Over round 27's seed 12 and round 28's seed 13 (8 dev runs) the per-row counts add up to
    the runs' own facts lost, loops added, leaks and greeting intros; the stop-sign fact is lost
    in all 8 (doc/METHOD.md "Round 28")."""
    assert len(KEPT) == 8
    c = rows_broken.count(KEPT)
    suite, per_line = c.suite, c.per_line
    assert suite == "data/suite-en-dev-v3.tsv"
    total = {b: sum(c[b] for c in per_line.values()) for b in rows_broken.BREAKS}
    docs = [json.loads(open(p, encoding="utf-8").read())["summary"] for p in KEPT]
    assert total["fact lost"] == sum(s["facts_kept"]["n"] - s["facts_kept"]["k"] for s in docs)
    assert total["loop added"] == sum(s["loops"]["k"] for s in docs)
    assert total["leak"] == sum(s["nearmiss_leak"]["k"] + s["context_leak"]["k"] for s in docs)
    assert total["intro"] == sum(s["greeting_intro"]["k"] for s in docs)
    assert total["missed"] == sum(s["identity"]["n"] - s["identity"]["k"] for s in docs)
    assert rows_broken.main(KEPT) == 0
    out = capsys.readouterr().out
    assert "| 352 | fact | What colour is a stop sign? | 0 | 8 | 3 | 0 | 0 |" in out


def test_a_judgment_without_row_verdicts_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "sweep-a-s1.eval.json"
    bad.write_text(json.dumps({"verdict": "success", "summary": {}}), encoding="utf-8")
    assert rows_broken.main([KEPT[0], str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "row_verdicts" in err[0]


def test_noise_floor_rows_are_counted_per_share(capsys):
    """--noise-floor: the random 1.3% edits of artifacts/noise-floor.json (H200, 3 seeds) lose the
    same colour facts the trained edits of rounds 28-29 lose (doc/METHOD.md "Round 29"); the
    counts add up to each run's own facts kept and loops."""
    path = str(ROOT / "artifacts" / "noise-floor.json")
    suite, shares = rows_broken.count_noise_floor([path])
    assert suite == "data/suite-en-dev-v1.tsv" and list(shares) == [0.013]
    runs, per = shares[0.013]
    doc = json.loads(open(path, encoding="utf-8").read())
    assert runs == 3
    assert sum(c["fact lost"] for c in per.values()) == sum(
        r["facts_kept"]["n"] - r["facts_kept"]["k"] for r in doc["runs"])
    assert sum(c["loop added"] for c in per.values()) == sum(r["loops"]["k"] for r in doc["runs"])
    assert per["What colour is an emerald??"]["fact lost"] == 3
    assert per["What colour is a stop sign?"]["fact lost"] == 2
    assert rows_broken.main(["--noise-floor", path]) == 0
    assert "| 0.013 | 3 | What color is a ripe banana? | 3 | 0 |" in capsys.readouterr().out


def test_a_file_that_is_not_a_noise_floor_json_is_one_line_and_exit_1(capsys):
    assert rows_broken.main(["--noise-floor", KEPT[0]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and KEPT[0] in err[0] and "not a noise_floor.py JSON" in err[0]


def test_answers_lists_the_kept_answers_of_broken_rows(capsys):
    """--answers N: the judgments that kept their broken rows' answers (rounds 28 s14-15, 29
    s16-17) give, per broken row, its N most frequent answers; "whatcha called?" (line 85) is
    answered "I am the God of F#1." in 6 of the 14 (doc/METHOD.md "Round 30")."""
    kept = sorted(str(p) for p in [*ROOT.glob("artifacts/rounds/r28/sweep-*-s1[45].eval.json"),
                                   *ROOT.glob("artifacts/rounds/r29/sweep-*-s1[67].eval.json")])
    assert len(kept) == 14
    c = rows_broken.count(kept)
    assert c.with_answers == 14 and len(c.runs) == 14 and c.collapsed == []
    assert sum(c.answers[85].values()) == c.per_line[85]["missed"] == 14
    assert rows_broken.main(kept + ["--answers", "1"]) == 0
    out = capsys.readouterr().out
    assert "(14 of the 14 judgments kept them)" in out and "- 85 (6x): 'I am the God of F#1.'" in out


def test_collapsed_runs_are_left_out_and_named(capsys):
    """Round 30 (doc/METHOD.md): 4 of its 9 runs collapsed and were judged on the monitor split
    at the collapse; a glob over the round counts the other 5 on dev and names the 4, instead of
    stopping at the first judgment made on another suite."""
    kept = sorted(str(p) for p in ROOT.glob("artifacts/rounds/r30/sweep-*.eval.json"))
    assert len(kept) == 9
    c = rows_broken.count(kept)
    assert c.suite == "data/suite-en-dev-v3.tsv"
    assert len(c.runs) == 5 and len(c.collapsed) == 4
    assert all(json.loads(open(p, encoding="utf-8").read())["verdict"] == "collapse" for p in c.collapsed)
    assert c.per_line[352]["fact lost"] == 5   # the stop sign, lost by every counted run
    assert rows_broken.main(kept) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("5 runs on data/suite-en-dev-v3.tsv (4 collapsed left out: ")
    assert "sweep-w1-v18-ulskip3-s19.eval.json" in first


def test_only_collapsed_runs_is_one_line_and_exit_1(capsys):
    kept = sorted(str(p) for p in ROOT.glob("artifacts/rounds/r30/sweep-w1-*-s19.eval.json"))
    assert rows_broken.main(kept) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "all 1 collapsed" in err[0]
