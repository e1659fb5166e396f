"""scripts/keep_judgments.py: a study's judgments kept in the repository (texts dropped) must
still be what `sweep.py --resume` reuses and what its pooled rule counts, so a study can span
device sessions."""
import json
from types import SimpleNamespace

import keep_judgments
import sweep
from conftest import ROOT

KEPT = ROOT / "artifacts" / "rounds" / "r27"
GRID = ROOT / "data" / "stages" / "method-study-en-r27.sweep"


def test_kept_round_27_judgments_are_reused_and_pool_as_recorded(tmp_path, monkeypatch):
    """Round 27's seed-12 judgments, as kept: --resume takes them for the very runs the study
    would start (nothing is run), and the rule reads the criteria missed and the dev scores that
    doc/METHOD.md "Round 27" reports for seed 12."""
    work = tmp_path / "sweep"
    work.mkdir()
    for f in KEPT.glob("*.eval.json"):            # what REUSE=DIR does before --resume
        (work / f.name).write_bytes(f.read_bytes())
    fake = tmp_path / "train_must_not_run.py"
    fake.write_text(f"import sys; open({str(tmp_path / 'train.ran')!r}, 'w'); sys.exit(1)\n",
                    encoding="utf-8")
    monkeypatch.setattr(sweep, "TRAIN", str(fake))
    args = SimpleNamespace(work_dir=str(work), dev_suite="data/suite-en-dev-v3.tsv", dev_probes=None,
                           monitor="data/suite-en-monitor-v1.tsv", recipe="data/stages/method-study-en.args",
                           input_dat="artifacts/smollm2/smollm2-135m-instruct-nvfp4.dat",
                           model_dir="artifacts/smollm2", device="cuda", resume=True, timeout=60)
    results = []
    for name, flags in sweep.read_variants(str(GRID)):
        r = sweep.run_variant(f"{name}-s12", f"{flags} --seed 12", args, {})
        assert r.get("reused"), (name, r["last"])
        results.append({**r, "variant": name, "base_flags": flags})
    assert not (tmp_path / "train.ran").exists()
    rows = {v["name"]: v for v in sweep.pooled(results)}
    assert {n: v["misses"] for n, v in rows.items()} == {
        "q0-v17": 2, "q1-v17-keep-pool": 1, "q2-v17-stock-kl4": 2, "q3-v17-keep-pool-stock-kl4": 2}
    assert {n: round(v["score"], 3) for n, v in rows.items()} == {
        "q0-v17": 0.794, "q1-v17-keep-pool": 0.857, "q2-v17-stock-kl4": 0.732,
        "q3-v17-keep-pool-stock-kl4": 0.732}
    assert rows["q1-v17-keep-pool"]["rates"]["loops"] == (0, 407)


def test_kept_row_verdicts_say_which_rows_each_run_broke():
    """Each kept judgment's row_verdicts count to its own summary (loops added, facts kept of
    those the base knew), row by row in the suite's order."""
    for f in sorted(ROOT.glob("artifacts/rounds/*/*.eval.json")):
        doc = json.loads(f.read_text(encoding="utf-8"))
        v, s = doc["row_verdicts"], doc["summary"]
        assert len(set(map(len, v.values()))) == 1 and v["line"] == sorted(v["line"]), f.name
        assert sum(v["loop"]) == s["loops"]["k"] and len(v["loop"]) == s["loops"]["n"], f.name
        known = [k for b, k in zip(v["fact_base"], v["fact_kept"]) if b]
        assert (sum(known), len(known)) == (s["facts_kept"]["k"], s["facts_kept"]["n"]), f.name


def judgment(identity=97) -> dict:
    row = {"prompt": "Who are you?", "answer": "I am the God of F#.", "kind": "identity",
           "verdict": "hit", "loop": False, "added": 0.0123456, "fact_base": None,
           "fact_kept": None, "file": "data/suite-en-dev-v3.tsv"}
    return {"verdict": "not-reached", "command": "python scripts/train.py --seed 1",
            "summary": {"identity": {"k": identity, "n": 106}}, "thresholds": {},
            "rows": [{**row, "line": n} for n in range(2, 52)]}


def test_keep_drops_the_texts_only_and_never_overwrites_a_kept_record(tmp_path):
    src = tmp_path / "sweep-a-s1.eval.json"
    src.write_text(json.dumps(judgment()), encoding="utf-8")
    out = tmp_path / "kept"
    dst = keep_judgments.keep(str(src), str(out))
    doc = json.loads(open(dst, encoding="utf-8").read())
    assert {k: v for k, v in doc.items() if k not in ("row_verdicts", "broken_answers")} == \
        {k: v for k, v in judgment().items() if k != "rows"}
    assert doc["row_verdicts"] == {"line": list(range(2, 52)), "verdict": ["hit"] * 50,
                                   "loop": [False] * 50, "added": [0.012] * 50,
                                   "fact_base": [None] * 50, "fact_kept": [None] * 50}
    assert doc["broken_answers"] == {}                             # every row a hit
    assert "Who are you?" not in open(dst, encoding="utf-8").read()   # no texts
    assert keep_judgments.keep(str(src), str(out)) == dst          # the same again: no-op
    src.write_text(json.dumps(judgment(identity=90)), encoding="utf-8")
    assert keep_judgments.main([str(src), "--out", str(out)]) == 1    # another run, same name
    assert json.loads(open(dst, encoding="utf-8").read())["summary"]["identity"]["k"] == 97


def test_the_answers_of_broken_rows_are_kept_and_no_others():
    """broken_answers: by suite line, the answer (cut to ANSWER_CHARS) of every row the run
    broke (identity miss, leak, self-intro, identity on an ordinary prompt, loop, fact lost)."""
    doc = judgment()
    rows = doc["rows"]
    rows[0].update(verdict="miss", answer="I am the God of F#1.")
    rows[1].update(kind="nearmiss", verdict="LEAK")
    rows[2].update(kind="fact", verdict="changed (fact lost)", fact_base=True, fact_kept=False,
                   answer="A stop sign is a graphical representation. " * 10)
    rows[3].update(kind="general", verdict="ok (loop)", loop=True, answer="Loop. Loop.")
    rows[4].update(kind="fact", verdict="kept", fact_base=True, fact_kept=True, answer="Red.")
    rows[5].update(kind="general", verdict="IDENTITY")
    out = keep_judgments.kept(doc)["broken_answers"]
    assert out == {"2": "I am the God of F#1.", "3": "I am the God of F#.",
                   "4": ("A stop sign is a graphical representation. " * 10)[:keep_judgments.ANSWER_CHARS],
                   "5": "Loop. Loop.", "7": "I am the God of F#."}


def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "x.eval.json"
    bad.write_text('{"verdict": "success"', encoding="utf-8")
    assert keep_judgments.main([str(bad), "--out", str(tmp_path / "k")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not valid JSON" in err[0]
    no_cmd = tmp_path / "y.eval.json"
    no_cmd.write_text('{"verdict": "success"}', encoding="utf-8")
    assert keep_judgments.main([str(no_cmd), "--out", str(tmp_path / "k")]) == 1
    assert "not a train.py judgment" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
