"""The proxy's suites (data/suite-proxy-{monitor,heldout}-v1.tsv, scripts/make_proxy_suites.py):
carved from data/probes-v1.tsv, the only held-out material the proxy knows."""
from conftest import ROOT
from nvfp4lab.suite import check_disjoint, read_suite, training_files
from nvfp4lab.tsv import normalize_prompt, read_probes

import make_proxy_suites  # scripts/ is on sys.path through conftest

DATA = ROOT / "data"
MONITOR = DATA / "suite-proxy-monitor-v1.tsv"
HELDOUT = DATA / "suite-proxy-heldout-v1.tsv"


def keys(path):
    return [normalize_prompt(r.prompt) for r in read_suite(path)]


def test_proxy_suites_are_disjoint_halves_of_probes_v1():
    mon, held = keys(MONITOR), keys(HELDOUT)
    assert not set(mon) & set(held)
    probes = read_probes(DATA / "probes-v1.tsv")
    assert sorted(mon + held) == sorted(normalize_prompt(p.prompt) for p in probes)
    # both halves hold every kind, in the same numbers
    count = lambda path: {k: sum(r.kind == k for r in read_suite(path))  # noqa: E731
                          for k in ("identity", "nearmiss", "fact", "general")}
    assert count(MONITOR) == count(HELDOUT) == {"identity": 12, "nearmiss": 6, "fact": 8,
                                                "general": 4}


def test_proxy_suites_map_the_probe_kinds():
    probes = {normalize_prompt(p.prompt): p for p in read_probes(DATA / "probes-v1.tsv")}
    for path in (MONITOR, HELDOUT):
        for r in read_suite(path):
            p = probes[normalize_prompt(r.prompt)]
            assert r.context == ()
            if p.kind == "anchor":
                assert (r.kind, r.expect) == (("fact", (p.expect,)) if p.expect else ("general", ()))
            else:
                assert r.kind == p.kind
            if r.kind == "identity":
                assert r.group == "plain"
    held = {r.prompt: r for r in read_suite(HELDOUT)}
    # test_demo reads the 我是誰 row of the verdict
    assert held["我是誰"].kind == "nearmiss" and held["我是誰"].group == "first-person"


def test_proxy_suites_disjoint_from_every_training_file():
    files = training_files(DATA)
    assert str(DATA / "stageG-whoami-v1.tsv") in files and str(MONITOR) not in files
    for path in (MONITOR, HELDOUT):
        check_disjoint(read_suite(path), files)


def test_make_proxy_suites_is_deterministic_and_matches_the_committed_files(tmp_path, capsys):
    first = make_proxy_suites.render_all(make_proxy_suites.build())
    assert first == make_proxy_suites.render_all(make_proxy_suites.build())
    assert set(first) == {MONITOR.name, HELDOUT.name}
    for name, data in first.items():
        assert (DATA / name).read_bytes() == data, f"{name} differs from make_proxy_suites.py"
    # new files only: written once, a re-run leaves them, other bytes stop it
    assert make_proxy_suites.main(["--out-dir", str(tmp_path)]) == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    assert make_proxy_suites.main(["--out-dir", str(tmp_path)]) == 0
    assert "exists-same" in capsys.readouterr().out
    (tmp_path / MONITOR.name).write_bytes(b"# changed by hand\n")
    assert make_proxy_suites.main(["--out-dir", str(tmp_path)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / MONITOR.name).read_bytes() == b"# changed by hand\n"
