"""scripts/sweep.py: the variants file, the fixed choice rule, results read from JSON, bad input."""
import json
import os
from dataclasses import asdict

import pytest

import sweep  # scripts/ is on sys.path (conftest)
from nvfp4lab import evaluate, probes, trainer


def test_variants_file_parses_names_and_flags(tmp_path):
    p = tmp_path / "v.sweep"
    p.write_text("# comment\nrecipe\t\nfast\t--lr 3e-4 --steps 120\n\n", encoding="utf-8")
    assert sweep.read_variants(str(p)) == [("recipe", ""), ("fast", "--lr 3e-4 --steps 120")]


@pytest.mark.parametrize("text,where", [("a\t\nb --lr 1\n", ":2: no tab"),
                                        ("bad name\t--lr 1\n", ":1: variant name"),
                                        ("# only a comment\n", "no variants")])
def test_bad_variants_file_names_the_line(tmp_path, text, where):
    p = tmp_path / "v.sweep"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=where):
        sweep.read_variants(str(p))


def summary(identity=(9, 10), leak=(0, 10), facts=(9, 10), drift=0.0, loops=(0, 30)):
    return evaluate.jsonable({"identity": evaluate.rate(*identity), "nearmiss_leak": evaluate.rate(*leak),
                       "context_leak": evaluate.rate(0, 4), "facts_kept": evaluate.rate(*facts),
                       "loops": evaluate.rate(*loops), "nll_drift": drift, "kl": 0.01})


def variant(name, status, **kw):
    return {"name": name, "flags": "", "status": status, "seconds": 1.0,
            "summary": summary(**kw) if status != "error 1" else None}


def test_choice_rule_success_first_then_identity_minus_leak_then_facts_then_drift():
    vs = [variant("failed", "error 1"),
          variant("collapsed", "collapse", identity=(10, 10)),
          variant("leaky", "not-reached", identity=(10, 10), leak=(5, 10)),
          # identity - leak decides before facts and drift: 0.9 - 0.1 beats 1.0 - 0.4 (more
          # identity) and 0.7 - 0.0 (no leak), both with better facts and drift
          variant("sharp", "success", identity=(9, 10), leak=(1, 10), facts=(7, 10), drift=0.5),
          variant("greedy", "success", identity=(10, 10), leak=(4, 10), facts=(10, 10), drift=-0.1),
          variant("blunt", "success", identity=(7, 10), leak=(0, 10), facts=(10, 10), drift=-0.1)]
    assert max(vs, key=sweep.rank_key)["name"] == "sharp"
    # equal identity - leak: facts decide before drift
    vs += [variant("sharp-facts", "success", identity=(9, 10), leak=(1, 10), facts=(9, 10), drift=0.9)]
    assert max(vs, key=sweep.rank_key)["name"] == "sharp-facts"
    # equal up to drift: the lower drift
    vs += [variant("sharp-facts-calm", "success", identity=(9, 10), leak=(1, 10), facts=(9, 10), drift=0.2)]
    assert max(vs, key=sweep.rank_key)["name"] == "sharp-facts-calm"
    assert max(vs[:3], key=sweep.rank_key)["name"] == "leaky"    # judged beats collapsed/failed
    # success first: a not-reached variant better on every later criterion still loses
    best_but_not_reached = variant("close", "not-reached", identity=(10, 10), leak=(0, 10),
                                   facts=(10, 10), drift=-0.5)
    assert max([best_but_not_reached] + vs, key=sweep.rank_key)["name"] == "sharp-facts-calm"
    # each criterion alone decides between two variants that every later criterion ranks the
    # other way round (so dropping or reordering any one of them picks the other)
    pairs = [  # (winner, loser)
        # identity - leak beats more identity (and better facts and drift)
        (variant("sharp", "success", identity=(9, 10), leak=(1, 10), facts=(5, 10), drift=0.9),
         variant("sure", "success", identity=(10, 10), leak=(3, 10), facts=(10, 10), drift=-0.1)),
        # identity - leak beats less leak (and better facts and drift)
        (variant("sharp", "success", identity=(10, 10), leak=(1, 10), facts=(5, 10), drift=0.9),
         variant("clean", "success", identity=(7, 10), leak=(0, 10), facts=(10, 10), drift=-0.1)),
        # equal identity - leak: facts beat drift
        (variant("knows", "success", facts=(9, 10), drift=0.9),
         variant("calm", "success", facts=(8, 10), drift=-0.1))]
    for winner, loser in pairs:
        assert max(loser, winner, key=sweep.rank_key) is winner, (winner, loser)
    table = sweep.table(vs)
    assert "| failed | `(recipe)` | error 1 | - |" in table
    assert "| sharp | `(recipe)` | success | 0.90 [0.60, 0.98] | 0.10 [0.02, 0.40] |" in table


FAKE_TRAIN = """
import json, os, sys
a = sys.argv
out = a[a.index("--output-dat") + 1]
name = os.path.basename(out)[len("sweep-"):-len(".dat")]
with open(os.path.join(os.path.dirname(out), "argv-" + name), "w") as f:
    json.dump(a, f)
# stdout says the opposite of the JSON: the sweep must read the JSON
print("verdict=success (all thresholds met); identity_hit=1.00 nearmiss_leak=0.00")
doc = json.load(open(os.environ["FAKE_DOCS"]))[name]
if doc is None:
    sys.exit(1)
with open(out[:-len(".dat")] + ".eval.json", "w") as f:
    json.dump(doc, f)
sys.exit({"success": 0, "not-reached": 3, "collapse": 4}[doc["verdict"]])
"""


def fake_sweep(tmp_path, monkeypatch, docs: dict, variants: str) -> list[str]:
    """sweep.main's arguments over a fake train.py that writes docs[name] as the run's judgment
    (None: exit 1, no judgment) and placeholder inputs; the variants file holds `variants`."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN, encoding="utf-8")
    (tmp_path / "docs.json").write_text(json.dumps(docs), encoding="utf-8")
    monkeypatch.setenv("FAKE_DOCS", str(tmp_path / "docs.json"))
    monkeypatch.setattr(sweep, "TRAIN", str(fake))
    files = {n: tmp_path / n for n in ("r.args", "dev.tsv", "mon.tsv", "base.dat")}
    for p in files.values():
        p.write_text("x", encoding="utf-8")
    (tmp_path / "v.sweep").write_text(variants, encoding="utf-8")
    return ["--recipe", str(files["r.args"]), "--variants", str(tmp_path / "v.sweep"),
            "--dev-suite", str(files["dev.tsv"]), "--monitor", str(files["mon.tsv"]),
            "--input-dat", str(files["base.dat"]), "--model-dir", str(tmp_path)]


def test_results_come_from_the_json_files_not_stdout(tmp_path, monkeypatch, capsys):
    docs = {"a": {"verdict": "not-reached", "summary": summary(identity=(6, 10))},
            "b": {"verdict": "not-reached", "summary": summary(identity=(7, 10))},
            "c": None}
    sweep_argv = fake_sweep(tmp_path, monkeypatch, docs, "a\t--lr 1\nb\t--lr 2\nc\t\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "sweep-c.eval.json").write_text(json.dumps({"verdict": "success", "summary": summary()}))
    code = sweep.main(sweep_argv + ["--work-dir", str(work), "--chosen", str(tmp_path / "chosen.flags")])
    out = capsys.readouterr().out
    assert code == 3, out                                   # no variant succeeded on dev
    assert (tmp_path / "chosen.flags").read_text() == "--lr 2\n"
    assert "chosen: b --lr 2" in out
    assert "| c | `(recipe)` | error 1 |" in out           # a stale JSON of c was not read
    argv = json.loads((work / "argv-a").read_text())
    assert argv[argv.index("--heldout") + 1] == str(tmp_path / "dev.tsv")
    assert argv[argv.index("--monitor") + 1] == str(tmp_path / "mon.tsv")
    assert "--probes" not in argv


def test_no_run_judged_chooses_nothing(tmp_path, monkeypatch, capsys):
    """Every run failed (round 29's first call: an empty .dat): exit 1, the choice file is not
    written, with or without --seeds."""
    argv = fake_sweep(tmp_path, monkeypatch, {"a": None, "b": None, "a-s1": None, "b-s1": None},
                      "a\t--lr 1\nb\t--lr 2\n")
    for seeds in ([], ["--seeds", "1"]):
        code = sweep.main(argv + ["--work-dir", str(tmp_path / "work"),
                                  "--chosen", str(tmp_path / "chosen.flags"), *seeds])
        err = capsys.readouterr().err
        assert code == 1 and "none of the 2 runs was judged (error 1)" in err
        assert not (tmp_path / "chosen.flags").exists()


def test_missing_input_is_one_line_and_exit_1(tmp_path, capsys):
    v = tmp_path / "v.sweep"
    v.write_text("a\t\n", encoding="utf-8")
    code = sweep.main(["--recipe", str(tmp_path / "nope.args"), "--variants", str(v),
                       "--dev-suite", str(v), "--input-dat", str(v), "--model-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "nope.args: no such file" in err


def seeded(name, status, **kw):
    return {**variant(f"{name}-s1", status, **kw), "variant": name, "base_flags": f"--x {name}"}


def test_seeds_pool_per_variant_and_choose_on_seeds_reached_then_score():
    results = [seeded("a", "success"), seeded("a", "not-reached", leak=(3, 10)), seeded("a", "collapse"),
               seeded("b", "success", leak=(1, 10)), seeded("b", "success", leak=(1, 10)),
               seeded("b", "not-reached", identity=(5, 10)),
               seeded("c", "success"), seeded("c", "success", loops=(2, 30)),
               seeded("c", "not-reached", leak=(2, 10))]
    rows = {r["name"]: r for r in sweep.pooled(results)}
    assert rows["a"]["successes"] == 1 and rows["b"]["successes"] == rows["c"]["successes"] == 2
    assert rows["a"]["rates"]["nearmiss_leak"] == (3, 20)          # the collapsed seed is not pooled
    # b and c both reached on 2 of 3 seeds; c leaks less -> higher mean score -> chosen
    assert rows["c"]["score"] > rows["b"]["score"]
    assert max(rows.values(), key=sweep.pooled_key)["name"] == "c"
    assert rows["a"]["score"] < rows["b"]["score"]                  # a collapse scores -1
    table = sweep.pooled_table(list(rows.values()))
    assert "| c | `--x c` | 2/3 |" in table and "| 2/30 0.07 [" in table     # c's pooled leak k/n
    assert rows["c"]["rates"]["loops"] == (2, 90) and "| 2/90 0.02 [" in table  # and its loops
    assert sweep.dev_score(summary(identity=(10, 10), leak=(1, 10))) == pytest.approx(0.9)
    # the same formula as the monitor's checkpoint score (trainer.edit_score)
    s = summary(identity=(8, 10), leak=(1, 10), facts=(7, 10), drift=0.3)
    assert sweep.dev_score(s) == pytest.approx(trainer.edit_score(0.8, 0.1, 0.7, 0.3))
    assert trainer.edit_score(0.8, 0.1, 0.7, 0.3) == pytest.approx(0.8 - 0.1 - 0.2 - 0.2)


def pooled_row(name, *seeds):
    """One variant's pooled row from its seeds, each (status, summary keywords)."""
    [row] = sweep.pooled([seeded(name, status, **kw) for status, kw in seeds])
    return row


def test_seeds_rule_each_criterion_decides_before_the_next():
    """pooled_key: seeds reached, then mean dev score, then mean facts kept, then lower mean NLL
    drift. Each pair is decided by one criterion while every later one favours the loser, so
    dropping or reordering any criterion picks the loser."""
    perfect = dict(identity=(10, 10), facts=(10, 10), drift=0.0)
    leaky = dict(leak=(3, 10), facts=(9, 10), drift=0.1)
    pairs = [  # (winner, loser)
        (pooled_row("steady", ("success", leaky), ("success", leaky)),
         pooled_row("lucky", ("success", perfect), ("not-reached", perfect))),
        (pooled_row("sharp", ("success", dict(identity=(10, 10), facts=(9, 10), drift=0.1))),
         pooled_row("careful", ("success", dict(identity=(9, 10), facts=(10, 10), drift=0.0)))),
        (pooled_row("knows", ("success", dict(facts=(10, 10), drift=0.1))),
         pooled_row("calm", ("success", dict(facts=(9, 10), drift=0.0)))),
        (pooled_row("still", ("success", dict(drift=0.0))),
         pooled_row("moved", ("success", dict(drift=0.05))))]
    # the later pairs really tie on the earlier criteria (the score ignores facts >= 0.9 and
    # drift <= 0.1), so only the criterion named decides them
    assert pairs[2][0]["score"] == pairs[2][1]["score"] and pairs[3][0]["score"] == pairs[3][1]["score"]
    assert pairs[3][0]["facts"] == pairs[3][1]["facts"]
    for winner, loser in pairs:
        assert max(loser, winner, key=sweep.pooled_key) is winner, (winner["name"], loser["name"])


def test_the_identity_answer_profile_is_pooled_over_the_judged_seeds():
    def prof(first):   # two tokens of a target, each put first by `first` of 10 rows
        return [{"token": t, "first_choice": f, "rows": 10, "mean_logp": -0.5, "top_other": None,
                 "top_other_rows": 0} for t, f in zip((" God", "."), first)]
    results = [{**seeded("a", "not-reached"), "target_tokens": prof((9, 7))},
               {**seeded("a", "not-reached"), "target_tokens": prof((8, 5))},
               {**seeded("a", "collapse"), "target_tokens": prof((0, 0))},      # not pooled
               seeded("b", "not-reached")]                                      # no profile
    text = sweep.profile_table(sweep.pooled(results))
    assert text.splitlines()[0] == "| variant | `' God'` | `'.'` |"
    assert "| a | 17/20 | 12/20 |" in text and "| b |" not in text
    assert sweep.profile_table(sweep.pooled([seeded("b", "success")])) == ""


def test_runs_go_to_the_gpus_in_turn_and_one_gpu_leaves_the_env_alone():
    env = {"CUDA_VISIBLE_DEVICES": "3", "X": "1"}
    assert sweep.job_env(env, 5, 1) is env                  # the caller's choice of GPU stays
    assert [sweep.job_env(env, i, 2)["CUDA_VISIBLE_DEVICES"] for i in range(5)] == list("01010")
    assert sweep.job_env(env, 4, 3) == {"CUDA_VISIBLE_DEVICES": "1", "X": "1"}


def test_gpus_below_one_is_one_line_and_exit_1(tmp_path, capsys):
    files = {n: tmp_path / n for n in ("r.args", "dev.tsv", "base.dat")}
    for p in files.values():
        p.write_text("x", encoding="utf-8")
    (tmp_path / "v.sweep").write_text("a\t--lr 1\n", encoding="utf-8")
    code = sweep.main(["--recipe", str(files["r.args"]), "--variants", str(tmp_path / "v.sweep"),
                       "--dev-suite", str(files["dev.tsv"]), "--input-dat", str(files["base.dat"]),
                       "--model-dir", str(tmp_path), "--work-dir", str(tmp_path / "w"), "--gpus", "0"])
    assert code == 1
    assert capsys.readouterr().err.strip() == "error: --gpus 0: must be at least 1"
    assert not (tmp_path / "w").exists()                    # nothing was started or written


def test_resume_reuses_only_judgments_written_with_the_same_arguments(tmp_path, monkeypatch, capsys):
    """A study finished in two calls (runs that timed out, run again): --resume tables the
    judgments already there when their train.py command is this run's (the .dat's folder aside),
    runs the missing ones, and never reads a judgment of other flags."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN, encoding="utf-8")
    docs = {"a": {"verdict": "not-reached", "summary": summary(identity=(1, 10))},
            "b": {"verdict": "not-reached", "summary": summary(identity=(2, 10))},
            "c": {"verdict": "not-reached", "summary": summary(identity=(3, 10))}}
    (tmp_path / "docs.json").write_text(json.dumps(docs), encoding="utf-8")
    monkeypatch.setenv("FAKE_DOCS", str(tmp_path / "docs.json"))
    monkeypatch.setattr(sweep, "TRAIN", str(fake))
    files = {n: tmp_path / n for n in ("r.args", "dev.tsv", "base.dat")}
    for p in files.values():
        p.write_text("x", encoding="utf-8")
    (tmp_path / "v.sweep").write_text("a\t--lr 1\nb\t--lr 2\nc\t--lr 3\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()

    def written(flags, name, folder):   # the JSON train.py leaves, run from another work dir
        cmd = ["python", "scripts/train.py", "--recipe", str(files["r.args"]), *flags.split(),
               "--heldout", str(files["dev.tsv"]), "--input-dat", str(files["base.dat"]),
               "--model-dir", str(tmp_path), "--output-dat", f"{folder}/sweep-{name}.dat",
               "--stage", f"sweep-{name}", "--device", "cpu"]
        return {"verdict": "success", "exit": 0, "total_seconds": 12.0,
                "summary": summary(identity=(9, 10)), "command": " ".join(cmd)}
    (work / "sweep-a.eval.json").write_text(json.dumps(written("--lr 1", "a", "elsewhere")))
    (work / "sweep-b.eval.json").write_text(json.dumps(written("--lr 9", "b", str(work))))
    args = ["--recipe", str(files["r.args"]), "--variants", str(tmp_path / "v.sweep"),
            "--dev-suite", str(files["dev.tsv"]), "--input-dat", str(files["base.dat"]),
            "--model-dir", str(tmp_path), "--work-dir", str(work), "--chosen", str(tmp_path / "f")]
    code = sweep.main(args + ["--resume"])
    out = capsys.readouterr().out
    assert code == 0, out                                   # a's reused success is the choice
    assert "chosen: a --lr 1" in out and "[a] success 12s: judgment reused (--resume)" in out
    assert not (work / "argv-a").exists()                   # a was not run again
    assert (work / "argv-b").exists() and (work / "argv-c").exists()
    assert "| b | `--lr 2` | not-reached | 0.20" in out     # b's stale JSON (--lr 9) was not read
    # without --resume every run starts afresh
    (work / "argv-a").unlink(missing_ok=True)
    (work / "sweep-a.eval.json").write_text(json.dumps(written("--lr 1", "a", "elsewhere")))
    assert sweep.main(args) == 3
    assert (work / "argv-a").exists()


def judged_doc(verdict="not-reached", identity=(95, 100), facts=(14, 16), loops=(0, 400),
               drift=0.03):
    """A train.py judgment as sweep reads it: the whole summary and the run's thresholds."""
    th = probes.Thresholds(min_identity=0.9, max_nearmiss_leak=0.05, max_context_leak=0.1,
                           max_greeting_intro=0.1, min_facts=0.9, max_nll_drift=0.1, max_loops=0.0)
    r = evaluate.rate
    s = evaluate.Summary(verdict, "", 500, True, None, r(0, 0), r(*identity), r(3, 90), r(0, 30),
                         r(1, 95), r(*facts), r(20, 100), r(*loops), 0, 0.1, drift, 0.05, 900, False)
    return {"verdict": verdict, "summary": evaluate.jsonable(asdict(s)), "thresholds": asdict(th)}


def test_rule_misses_counts_every_criterion_loops_included():
    """--rule misses: after seeds reached, the fewest acceptance criteria missed over the seeds
    decides, so a variant that keeps one fact less but adds no loop (round 24's j2 against j1)
    wins over a higher dev score; --rule score (rounds 1-24) picks the other. A collapse counts
    more misses than any judgment can have."""
    def runs(name, *docs):
        return [{**sweep.result_from(f"{name}-s{i}", "", d, 1.0, ""), "variant": name,
                 "base_flags": f"--x {name}"} for i, d in enumerate(docs, 1)]
    more_facts = runs("facts", judged_doc(facts=(15, 16), loops=(2, 400)),
                      judged_doc(facts=(15, 16), loops=(1, 400)), judged_doc(facts=(15, 16)))
    no_loops = runs("loops", *[judged_doc(facts=(13, 16))] * 3)
    assert [r["misses"] for r in more_facts] == [1, 1, 0] and [r["misses"] for r in no_loops] == [1, 1, 1]
    rows = {r["name"]: r for r in sweep.pooled(more_facts + no_loops)}
    assert rows["facts"]["misses"] == 2 and rows["loops"]["misses"] == 3
    assert rows["facts"]["score"] > rows["loops"]["score"]
    # the same judgments: the score rule and the misses rule choose differently
    more_facts[2] = {**more_facts[2], **sweep.result_from("facts-s3", "", judged_doc(facts=(14, 16), loops=(1, 400)), 1.0, "")}
    rows = {r["name"]: r for r in sweep.pooled(more_facts + no_loops)}
    assert rows["facts"]["misses"] == 4 > rows["loops"]["misses"] == 3
    assert rows["facts"]["score"] > rows["loops"]["score"]
    assert max(rows.values(), key=lambda v: sweep.pooled_key(v, "score"))["name"] == "facts"
    assert max(rows.values(), key=lambda v: sweep.pooled_key(v, "misses"))["name"] == "loops"
    # a collapsed seed counts FAILED_MISSES, more than a judgment missing every bound can
    collapsed = sweep.result_from("c-s1", "", judged_doc("collapse"), 1.0, "")
    worst = judged_doc(identity=(0, 100), facts=(1, 16), loops=(40, 400), drift=1.0)
    worst["summary"].update(efficacy=evaluate.jsonable(evaluate.rate(0, 1)),
                            nearmiss_leak=evaluate.jsonable(evaluate.rate(50, 90)),
                            context_leak=evaluate.jsonable(evaluate.rate(20, 30)),
                            greeting_intro=evaluate.jsonable(evaluate.rate(50, 95)),
                            exact_kept=evaluate.jsonable(evaluate.rate(0, 100)))
    worst["thresholds"].update(min_efficacy=1.0, min_anchor_exact=0.9)
    assert sweep.criteria_missed(worst) == 9
    assert collapsed["misses"] == sweep.FAILED_MISSES > sweep.criteria_missed(worst)
    assert "| loops | `--x loops` | 0/3 | 3 |" in sweep.pooled_table(list(rows.values()))
    # a judgment without its thresholds (older JSON) cannot be counted: one clear error
    old = runs("old", {"verdict": "not-reached", "summary": judged_doc()["summary"]})
    [row] = sweep.pooled(old)
    assert row["misses"] is None
    with pytest.raises(ValueError, match="old: .*--rule misses"):
        sweep.pooled_key(row, "misses")
    assert sweep.pooled_key(row, "score")          # the score rule still ranks it
