"""Dense checkpoint (HF safetensors dir) -> `.dat` in the original's layout.

Rules (as the user's Qwen3 file): every bias-free nn.Linear weight whose in_features % 16 == 0 is an
NVFP4 pair (`<name>.qdata` uint8 elemType 0 by default, `<name>.scale` E4M3 elemType 101);
everything else (embeddings, norms) is float16 (elemType 5). The NVFP4 rule is torchao's
`NVFP4Tensor.to_nvfp4` (scale floor 2^-6, codes rounded half to even; nvfp4_ref.py), the one the
user's file was made with, so a converted model has the same kind of blocks as theirs. lm_head is always its own NVFP4 pair,
also when config.json ties it to the embeddings (taken from embed_tokens then). Entry order is
the model's parameter order (embed, layers 0..L-1 in module order, final norm, lm_head).
"""
import glob
import os
from typing import Callable, Iterator

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from . import ops
from .dat import ELEM_DENSE, ELEM_QDATA, ELEM_SCALE, write_dat
from .model import load_config


def conversion_plan(config) -> list[tuple[str, bool]]:
    """(parameter name, is_nvfp4) in file order, from the model transformers builds for config."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = {f"{n}.weight" for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and m.bias is None and m.in_features % 16 == 0}
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    if "lm_head.weight" not in names:
        names.append("lm_head.weight")
        linear.add("lm_head.weight")
    return [(n, n in linear) for n in names]


def entry_count(plan) -> int:
    """How many `.dat` entries a plan writes (an NVFP4 weight is two: qdata and scale)."""
    return sum(2 if nvfp4 else 1 for _, nvfp4 in plan)


def dat_entries(plan, get_tensor: Callable[[str], torch.Tensor], qdata_elem_type=ELEM_QDATA,
                device="cpu") -> Iterator[tuple[str, int, torch.Tensor]]:
    """Yield (key, elemType, tensor) one weight at a time: peak memory ~ one tensor, twice."""
    for name, nvfp4 in plan:
        w = get_tensor(name)
        if nvfp4:
            q, s = ops.quantize(w.to(device, torch.float32))
            yield f"{name}.qdata", qdata_elem_type, q.cpu()
            yield f"{name}.scale", ELEM_SCALE, s.cpu()
        else:
            if not bool(torch.isfinite(w).all()):
                raise ValueError(f"tensor {name!r} contains NaN or Inf")
            yield name, ELEM_DENSE, w.to(torch.float16)
        del w


def safetensors_getter(hf_dir: str, tied: bool) -> Callable[[str], torch.Tensor]:
    from safetensors import safe_open
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors files")
    where = {}
    for f in files:
        with safe_open(f, "pt") as sf:
            for k in sf.keys():
                where[k] = f

    def get(name):
        if name not in where and name == "lm_head.weight" and tied:
            name = "model.embed_tokens.weight"
        if name not in where:
            raise KeyError(f"{hf_dir}: checkpoint has no tensor {name!r}")
        with safe_open(where[name], "pt") as sf:
            return sf.get_tensor(name)
    return get


def convert_hf(hf_dir: str, out: str, qdata_elem_type=ELEM_QDATA, device="cpu") -> list:
    config = load_config(hf_dir)
    plan = conversion_plan(config)
    get = safetensors_getter(hf_dir, bool(getattr(config, "tie_word_embeddings", False)))
    write_dat(out, dat_entries(plan, get, qdata_elem_type, device), entry_count(plan))
    return plan


def convert_gguf(gguf_path: str, out: str, model_dir_out: str, qdata_elem_type=ELEM_QDATA) -> list:
    """GGUF (e.g. SmolLM2-135M-Instruct.Q4_1.gguf) -> `.dat` + a model dir (config, tokenizer).

    transformers de-quantizes the GGUF tensors to float (needs the optional packages `gguf` and
    `accelerate`); from there the same rules as for safetensors apply.
    """
    from transformers import AutoTokenizer
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"{gguf_path}: no such file")
    folder, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    state = dict(model.state_dict())
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"])
    os.makedirs(model_dir_out, exist_ok=True)
    model.config.save_pretrained(model_dir_out)
    tok.save_pretrained(model_dir_out)
    plan = conversion_plan(model.config)
    write_dat(out, dat_entries(plan, lambda n: state[n].detach(), qdata_elem_type),
              entry_count(plan))
    return plan
