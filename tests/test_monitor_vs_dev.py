"""scripts/monitor_vs_dev.py: does the monitor, judged at a run's end, foretell its dev judgment?"""
import contextlib
import io
import json
from pathlib import Path

import monitor_vs_dev

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "artifacts/rounds/r37/sweep-k0-v19-s46.eval.json"   # a kept round-37 judgment


def judgment(tmp: Path, name: str, dev: dict, monitor: dict) -> str:
    """A copy of the kept judgment with its dev summary's and monitor's rates replaced."""
    doc = json.loads(KEPT.read_text())
    for summary, rates in ((doc["summary"], dev), (doc["attempts"][-1]["monitor"], monitor)):
        for key, (k, n) in rates.items():
            summary[key] = {**summary[key], "k": k, "n": n, "value": k / n}
    path = tmp / f"{name}.eval.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_a_monitor_that_tracks_dev_picks_the_best_seed(tmp_path):
    # identity: the monitor ranks the three seeds as dev does; only seed 3 meets dev's bar
    for seed, (dev_k, mon_k) in enumerate([(80, 20), (90, 25), (100, 29)], start=1):
        judgment(tmp_path, f"sweep-a-s{seed}", {"identity": (dev_k, 106)},
                 {"identity": (mon_k, 30)})
    out = json.loads(_run([str(tmp_path / "*.eval.json"), "--json"]))
    identity = next(m for m in out["measures"] if m["measure"] == "identity")
    assert identity["runs"] == 3 and identity["r"] > 0.9
    picks = out["picks"]
    assert picks["groups"] == 1 and picks["picked"] == picks["best"] < picks["random"]


def test_a_monitor_that_moves_against_dev_picks_the_worst_seed(tmp_path):
    # facts: the seed that keeps every monitor fact is the one that loses dev's
    for seed, (dev_k, mon_k) in enumerate([(16, 9), (12, 11)], start=1):
        judgment(tmp_path, f"sweep-b-s{seed}", {"facts_kept": (dev_k, 16)},
                 {"facts_kept": (mon_k, 11)})
    out = json.loads(_run([str(tmp_path / "*.eval.json"), "--json"]))
    picks = out["picks"]
    assert picks["picked"] > picks["best"]


def test_held_out_judgments_are_refused(tmp_path, capsys):
    held = tmp_path / "r99-heldout"
    held.mkdir()
    path = judgment(held, "v1-s1", {}, {})
    assert monitor_vs_dev.main([path]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "held-out" in err[0] and path in err[0]


def test_a_glob_that_matches_nothing_is_one_line(tmp_path, capsys):
    assert monitor_vs_dev.main([str(tmp_path / "none-*.eval.json")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _run(argv) -> str:
    """main's stdout (exit 0 asserted)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert monitor_vs_dev.main(argv) == 0
    return buf.getvalue()


def test_the_kept_rounds_give_the_documented_figures():
    """The figures doc/METHOD.md quotes, from the judgments kept in the repository."""
    files = [str(p) for r in range(27, 38)
             for p in (ROOT / f"artifacts/rounds/r{r}").glob("*.eval.json")]
    out = json.loads(_run([*files, "--json"]))
    r = {m["measure"]: m["r"] for m in out["measures"]}
    assert out["runs"] == 91
    assert r["identity"] > 0.8 and abs(r["facts_kept"]) < 0.1
    assert out["picks"]["groups"] == 27


def test_fact_halves_see_run_level_damage_and_name_the_fragile_facts():
    """Runs that lose every known fact or none: the two halves agree (r 1). Runs that lose the
    same one fact: the halves carry no run-level signal (no variation, r n/a) and the fact is
    named with its count."""
    def runs(tag, lose):   # lose(run, line) -> that run lost that base-known fact
        docs = []
        for run in range(3):
            doc = json.loads(KEPT.read_text())
            rv = doc["row_verdicts"]
            rv["fact_kept"] = [None if not b else not lose(run, line)
                               for line, b in zip(rv["line"], rv["fact_base"])]
            docs.append(doc)
        return docs

    whole = monitor_vs_dev.fact_split_half(runs("whole", lambda run, line: run != 1))
    assert whole["runs"] == 3 and whole["facts"] == 16 and whole["r"] == 1.0
    one = monitor_vs_dev.fact_split_half(runs("one", lambda run, line: line == 368))
    assert one["r"] is None and one["lost_per_fact"][368] == 3
    assert sum(one["lost_per_fact"].values()) == 3
