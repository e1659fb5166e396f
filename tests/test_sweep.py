"""scripts/sweep.py: the variants file, the fixed choice rule, and bad input."""
import pytest

import sweep  # scripts/ is on sys.path (conftest)


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


def variant(name, status, **nums):
    base = dict(identity_hit=1.0, nearmiss_leak=0.0, facts_kept=1.0, nll_drift=0.0)
    return {"name": name, "flags": "", "status": status, "nums": {**base, **nums} if status != "collapse" else {},
            "seconds": 1.0}


def test_choice_rule_success_first_then_identity_minus_leak_then_facts_then_drift():
    vs = [variant("collapsed", "collapse"),
          variant("leaky", "not-reached", nearmiss_leak=0.33),
          variant("ok", "success", identity_hit=0.85, nearmiss_leak=0.17),
          variant("ok-less-drift", "success", identity_hit=0.85, nearmiss_leak=0.17, nll_drift=-0.05)]
    assert max(vs, key=sweep.rank_key)["name"] == "ok-less-drift"
    assert max(vs[:2], key=sweep.rank_key)["name"] == "leaky"    # probes beat no probes
    assert "| collapsed | `(recipe)` | collapse | - |" in sweep.table(vs)


def test_missing_input_is_one_line_and_exit_1(tmp_path, capsys):
    v = tmp_path / "v.sweep"
    v.write_text("a\t\n", encoding="utf-8")
    code = sweep.main(["--recipe", str(tmp_path / "nope.args"), "--variants", str(v),
                       "--dev-probes", str(v), "--input-dat", str(v), "--model-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "nope.args: no such file" in err
