"""`make stageG` (and demo, demo-real: the same Makefile macro) validates the exported file with
both runners after success and after not-reached, never after a collapse, and exits with
train.py's code. train.py and validate.py are stand-ins here: the test is about the Makefile."""
import stat

import pytest

from conftest import run_make

FAKE_TRAIN = """#!/bin/bash
echo "train ran: $*"
exit ${TRAIN_EXIT:-0}
"""
# PY for make: validate.py is a stand-in, anything else (the extension's build) the real python
FAKE_PY = """#!/bin/bash
if [ "$1" = scripts/validate.py ]; then echo "validate ran: $*"; exit ${VALIDATE_EXIT:-0}; fi
exec python3 "$@"
"""


def script(path, text):
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.mark.parametrize("train_exit, validate_exit, validated, ok", [
    (0, 0, True, True),      # success: validated, exit 0
    (3, 0, True, False),     # not reached: the kept file is validated, make still fails (Error 3)
    (4, 0, False, False),    # collapse: nothing exported, nothing to validate
    (0, 1, True, False),     # a runner failed: make fails
])
def test_stage_validates_what_train_exported(tmp_path, monkeypatch, train_exit, validate_exit,
                                             validated, ok):
    fake_train = script(tmp_path / "fake_train.sh", FAKE_TRAIN)
    fake_py = script(tmp_path / "fake_py.sh", FAKE_PY)
    monkeypatch.setenv("TRAIN_EXIT", str(train_exit))
    monkeypatch.setenv("VALIDATE_EXIT", str(validate_exit))
    r = run_make("stageG", tmp_path, "BASE=Makefile", f"GUARD={fake_train}", f"PY={fake_py}",
                 f"MODEL_DIR={tmp_path}", timeout=600)
    out = r.stdout + r.stderr
    assert "train ran: scripts/train.py --recipe" in out, out
    assert ("validate ran: scripts/validate.py --weight artifacts/stageG.dat" in out) == validated, out
    assert (r.returncode == 0) == ok, out
    if train_exit and validate_exit == 0:
        assert f"Error {train_exit}" in out      # make names train.py's code
