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
    lines = r.stdout.strip().splitlines()
    calls, commands = lines[0::2], lines[1::2]
    assert [c.split(":")[0] for c in calls] == ["call 1", "call 2", "call 3"]
    assert "config.json" in calls[0] and "tokenizer.json.gz" in calls[2]
    # every call's command makes the folder and copies what that call carries
    assert all(c.startswith("  command: mkdir -p ~/smol && cp ") for c in commands)
    assert all(call.split(": ")[1].split(" (")[0] in cmd for call, cmd in zip(calls, commands))
    assert "cuda/build.py" in commands[0] and "gunzip" in commands[2]
    # a second cut into fewer parts leaves no part of the first behind
    r, data, out = cut(tmp_path, "2")
    assert r.returncode == 0 and len(list(out.glob("part*"))) == 2


def test_a_call_over_the_limit_or_a_bad_count_is_one_line_and_exit_1(tmp_path):
    r, _, _ = cut(tmp_path, "2", limit_mib="1")     # the tracked tree alone is over 1 MiB
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        "error: a call would carry over 1 MiB: run again with more parts"]
    r, _, _ = cut(tmp_path, "x")
    assert r.returncode == 1 and "PARTS x" in r.stderr


def test_a_join_with_a_part_missing_leaves_no_dat_behind(tmp_path):
    """device_method_study.sh joins the parts in ~/smol into artifacts/smollm2/ only when their
    hash matches: with a part not uploaded yet it stops (exit 1) and leaves no .dat, so the next
    call joins again instead of training on a partial file."""
    data = os.urandom(10_001)
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "smol").mkdir(parents=True)
    (work / "build").mkdir(parents=True)
    (work / "build" / ".ext-stamp").write_text("")          # no extension build here
    (home / "smol" / "dat.sha256").write_text(hashlib.sha256(data).hexdigest() + "  -\n")
    for name in ("config.json", "tokenizer_config.json", "chat_template.jinja"):
        (home / "smol" / name).write_text("{}")
    (home / "smol" / "partaa").write_bytes(data[:6000])
    env = {**os.environ, "HOME": str(home), "OUT": str(tmp_path / "out")}
    script = str(ROOT / "scripts" / "device_method_study.sh")
    dat = work / "artifacts" / "smollm2" / "smollm2-135m-instruct-nvfp4.dat"
    r = subprocess.run(["bash", script, "prepare"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "the joined .dat differs" in r.stdout
    assert sorted(p.name for p in dat.parent.iterdir()) == ["chat_template.jinja", "config.json",
                                                             "tokenizer_config.json"]
    (home / "smol" / "partab").write_bytes(data[6000:])
    r = subprocess.run(["bash", script, "prepare"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert dat.read_bytes() == data
