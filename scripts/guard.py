"""Run a command under the GPU memory guard: kill its whole process tree when it uses too much.

    python3 scripts/guard.py script scripts/train.py <args...>
    python3 scripts/guard.py --mode host --gpu-limit-gb 8 -- <any command>

The defaults are the original's settings (108 GiB, kill at once, poll every 0.5 s), kept in one
place: nvfp4lab.guard.GuardSettings.

Exit code: the child's, 124 when the guard killed it, 130/143 when the guard was interrupted,
2 for usage errors. `--help` lists the flags; the logic lives in nvfp4lab/guard.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nvfp4lab.guard  # noqa: E402

if __name__ == "__main__":
    sys.exit(nvfp4lab.guard.main())
