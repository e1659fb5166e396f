"""scripts/device_parts.sh: the converted model cut into parts that device calls can carry."""
import hashlib
import os
import subprocess

from conftest import ROOT

FILES = {"config.json": b"{}", "tokenizer_config.json": b"{}", "chat_template.jinja": b"x",
         "tokenizer.json": b'{"model": {}}' * 100}


def cut(tmp_path, *args, limit_mib="64"):
    smol = tmp_path / "smol"
    smol.mkdir(exist_ok=True)
    dat = smol / "smollm2-135m-instruct-nvfp4.dat"
    dat.write_bytes(os.urandom(10_001))
    for name, data in FILES.items():
        (smol / name).write_bytes(data)
    env = {**os.environ, "SMOL": str(smol), "OUT": str(tmp_path / "out"), "LIMIT_MIB": limit_mib}
    r = subprocess.run(["bash", "scripts/device_parts.sh", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    return r, dat.read_bytes(), tmp_path / "out"


def test_parts_join_to_the_dat_and_each_call_is_listed(tmp_path):
    r, data, out = cut(tmp_path, "3")
    assert r.returncode == 0, r.stderr
    parts = sorted(out.glob("part*"))
    assert len(parts) == 3 and b"".join(p.read_bytes() for p in parts) == data
    assert (out / "dat.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    calls = r.stdout.strip().splitlines()
    assert [c.split(":")[0] for c in calls] == ["call 1", "call 2", "call 3"]
    assert "config.json" in calls[0] and "tokenizer.json.gz" in calls[2]
    # a second cut into fewer parts leaves no part of the first behind
    r, data, out = cut(tmp_path, "2")
    assert r.returncode == 0 and len(list(out.glob("part*"))) == 2


def test_a_call_over_the_limit_or_a_bad_count_is_one_line_and_exit_1(tmp_path):
    r, _, _ = cut(tmp_path, "2", limit_mib="1")     # the tracked tree alone is over 1 MiB
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: a call would carry over 1 MiB: run again with more parts"]
    r, _, _ = cut(tmp_path, "x")
    assert r.returncode == 1 and "PARTS x" in r.stderr
