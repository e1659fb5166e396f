"""The user's records only grow, and `make reset` moves derived artifacts without deleting."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from nvfp4lab import devlog


def test_devlog_and_artifact_list_are_append_only(tmp_path):
    log, lst = tmp_path / "DevLog.md", tmp_path / "list.md"
    log.write_text("# DevLog\n\n## old entry\nkept as is\n", encoding="utf-8")
    before = log.read_bytes()
    devlog.append_devlog("stage X", [("目標/Goal", "g"), ("結論/Conclusion", "c")], path=log)
    devlog.append_devlog("stage Y", [("結論/Conclusion", "d")], path=log)
    after = log.read_bytes()
    assert after.startswith(before)
    text = after.decode("utf-8")
    assert text.index("stage X") < text.index("stage Y") and "### 目標/Goal" in text
    devlog.append_artifact("artifacts/a.dat", "first", "keep", path=lst)
    first = lst.read_bytes()
    devlog.append_artifact("artifacts/b.dat", "second", "try", path=lst)
    text = lst.read_text(encoding="utf-8")
    assert lst.read_bytes().startswith(first)
    assert text.count("| 檔案 | 用途 | 建議 |") == 1 and "更新時間：" in text
    assert "| artifacts/b.dat | second | try |" in text and "- b.dat: " in text


def test_loss_svg_is_written_atomically(tmp_path, monkeypatch):
    out = tmp_path / "loss.svg"
    devlog.loss_svg([3.0, 2.0, float("nan"), 1.0], str(out), "t")
    svg = out.read_text(encoding="utf-8")
    assert svg.startswith("<svg") and "polyline" in svg
    assert os.listdir(tmp_path) == ["loss.svg"]
    # A write that fails at the last moment leaves the old chart whole and no temp file: a plain
    # open(path, "w") would already have truncated it.
    def no_rename(*_):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        devlog.loss_svg([1.0, 0.5], str(out), "new")
    assert out.read_text(encoding="utf-8") == svg
    assert os.listdir(tmp_path) == ["loss.svg"]


def test_reset_moves_stage_outputs_and_keeps_base_and_proxy(tmp_path):
    art = tmp_path / "artifacts"
    (art / "proxy").mkdir(parents=True)
    (art / "proxy" / "proxy-base.dat").write_bytes(b"proxy")
    (art / "stageG.dat").write_bytes(b"g")
    (art / "stageG-loss.svg").write_text("<svg/>")
    (art / "檔案說明清單.md").write_text("list")
    base = art / "base.dat"
    base.write_bytes(b"base")
    env = dict(os.environ, NVFP4LAB_DEVLOG=str(tmp_path / "DevLog.md"))
    cmd = [sys.executable, str(ROOT / "scripts" / "reset.py"), "--artifacts", str(art),
           "--base", str(base)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "moved 2 file(s)" in r.stdout
    assert base.read_bytes() == b"base" and (art / "proxy" / "proxy-base.dat").exists()
    assert (art / "檔案說明清單.md").exists() and not (art / "stageG.dat").exists()
    trashed = sorted(p.name for p in (art / "_trash").rglob("*") if p.is_file())
    assert trashed == ["stageG-loss.svg", "stageG.dat"]
    assert "reset to the initial weights" in (tmp_path / "DevLog.md").read_text(encoding="utf-8")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "no derived artifacts" in r.stdout


def test_logged_command_names_repository_paths_relative_to_the_root(monkeypatch):
    """DevLog entries must not record where the checkout lived (a home or temp directory)."""
    from nvfp4lab import paths
    monkeypatch.setattr("sys.argv", [str(paths.ROOT / "scripts" / "train.py"), "--input-dat",
                                     str(paths.ROOT / "artifacts" / "x.dat"), "--out", "/elsewhere/y.dat"])
    monkeypatch.delenv("NVFP4LAB_GUARD_PREFIX", raising=False)
    assert devlog.command_line() == "python scripts/train.py --input-dat artifacts/x.dat --out /elsewhere/y.dat"


def test_logged_runner_output_names_the_interpreter_as_python():
    """validate.py logs each runner's output; the guard's `cmd=` line names the interpreter by
    its absolute path, which must not reach the log, nor the checkout's location."""
    out = (f"[guard] start child_pid=7 cmd={sys.executable} scripts/run_training2.py "
           f"--weight {ROOT}/artifacts/x.dat --model-dir /elsewhere/m\nout: hi")
    assert devlog.scrub_output(out) == ("[guard] start child_pid=7 cmd=python scripts/run_training2.py "
                                        "--weight artifacts/x.dat --model-dir /elsewhere/m\nout: hi")


def test_artifact_rows_name_repository_paths_relative_to_the_root(tmp_path):
    """The artifact list, like the DevLog's commands, names a file inside the checkout by its
    repo-relative path (make_proxy and train.py pass absolute ones by default)."""
    from nvfp4lab import paths
    lst = tmp_path / "list.md"
    devlog.append_artifact(str(paths.ROOT / "artifacts" / "proxy" / "proxy-base.dat"), "proxy", "keep", path=lst)
    text = lst.read_text(encoding="utf-8")
    assert "| artifacts/proxy/proxy-base.dat | proxy | keep |" in text and str(paths.ROOT) not in text
