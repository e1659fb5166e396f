"""The judging scripts' error contract (eval.py, revert_groups.py): bad input is one `error:`
line on stderr naming the file, and exit 1; so is running out of memory, with what to lower."""
import sys

import torch

from .dat import DatFormatError
from .model import ModelLoadError
from .nvfp4_ref import NVFP4Error
from .tsv import DataError

INPUT_ERRORS = (DataError, DatFormatError, ModelLoadError, NVFP4Error, FileNotFoundError,
                KeyError, ValueError)


def run_or_error(run, args, what: str) -> int:
    """run(args)'s exit code, or 1 after one error line. what: the job, for the memory message
    ("judging artifacts/x.dat")."""
    try:
        return run(args)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print(f"error: out of memory on {args.device} {what}; try a smaller --eval-batch",
              file=sys.stderr)
        return 1
