import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
SHARED = ROOT.parent / "shared" / "reference"

torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def shared_reference() -> Path:
    """../shared/reference, or skip the test when this checkout has no shared/ beside it."""
    if not SHARED.is_dir():
        pytest.skip("../shared/reference is absent")
    return SHARED
