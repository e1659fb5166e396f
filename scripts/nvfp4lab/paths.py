"""Where things live by default: the user's 4B model, else the built-in proxy."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
USER_MODEL_DIR = os.environ.get("QWEN_MODEL_DIR", "/models/qwen3-4b-instruct-2507-torchsharp")
USER_BASE_DAT = os.path.join(USER_MODEL_DIR, "Qwen3-4B-Instruct-2507-nvfp4.dat")
PROXY_DIR = ROOT / "artifacts" / "proxy"
PROXY_DAT = PROXY_DIR / "proxy-base.dat"
# Overridable so that tests (and dry runs) never append to the user's real records.
DEVLOG = Path(os.environ.get("NVFP4LAB_DEVLOG", ROOT / "doc" / "DevLog.md"))
ARTIFACT_LIST = Path(os.environ.get("NVFP4LAB_ARTIFACT_LIST", ROOT / "artifacts" / "檔案說明清單.md"))
CACHE_DIR = Path(os.environ.get("NVFP4LAB_CACHE", ROOT / "artifacts" / "cache"))


def default_model_dir() -> str:
    """The user's model dir when it exists, else the proxy (built by `make proxy`)."""
    if os.path.isdir(USER_MODEL_DIR):
        return USER_MODEL_DIR
    return str(PROXY_DIR)


def resolve_weight(weight: str, model_dir: str) -> str:
    """As the original runners: a relative --weight not found from here is looked up in model dir."""
    if os.path.isabs(weight) or os.path.exists(weight):
        return weight
    candidate = os.path.join(model_dir, weight)
    return candidate if os.path.exists(candidate) else weight


def default_weight(model_dir: str) -> str:
    if os.path.abspath(model_dir) == os.path.abspath(PROXY_DIR):
        return str(PROXY_DAT)
    return "Qwen3-4B-Instruct-2507-nvfp4.dat"
