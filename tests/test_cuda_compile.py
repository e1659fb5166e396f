"""Compile-only checks of the CUDA code with the local nvcc: no GPU needed, skipped without nvcc.
Catches compile errors, ptxas errors and register spills before a GPU machine is involved."""
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "cuda"
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def nvcc_top() -> Path:
    """The toolkit root nvcc really uses (nvcc may be a wrapper script elsewhere on PATH)."""
    out = run([NVCC, "-v", "-E", "-x", "cu", os.devnull, "-o", os.devnull]).stderr
    m = re.search(r"^#\$ TOP=(.*)$", out, re.M)
    assert m, out
    return Path(m.group(1).strip()).resolve()


@pytest.mark.parametrize("source", ["nvfp4_kernels.cu", "decode_attention.cu", "adam8.cu"])
@pytest.mark.parametrize("arch", ["sm_90", "sm_100", "sm_120", "sm_121"])
def test_kernels_compile(arch, source, tmp_path):
    """The pure-CUDA kernels (no torch headers), SASS for each target build.py asks for."""
    if f"compute_{arch[3:]}" not in run([NVCC, "--list-gpu-arch"]).stdout.split():
        pytest.skip(f"this nvcc does not know {arch}")
    r = run([NVCC, "-cubin", f"-arch={arch}", "-O3", "-std=c++17", "-Xptxas", "-warn-spills,-warn-lmem-usage",
             "-Werror", "all-warnings", str(CUDA_DIR / source), "-o", str(tmp_path / "k.cubin")])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_torch_cuda_wrappers_syntax(tmp_path):
    """nvfp4_ops.cpp with its CUDA half switched on, syntax only, against this torch's headers. A CPU
    wheel lacks one generated CUDA header (c10/cuda/impl/cuda_cmake_macros.h): a stub stands in."""
    stub = tmp_path / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    stub.parent.mkdir(parents=True)
    stub.write_text("#pragma once\n")
    cxx = os.environ.get("CXX", "c++")
    inc = [f"-I{p}" for p in cpp_extension.include_paths()]
    inc += [f"-I{tmp_path}", f"-I{sysconfig.get_paths()['include']}", f"-I{nvcc_top() / 'include'}"]
    r = run([cxx, "-std=c++20", "-fsyntax-only", "-DNVFP4_WITH_CUDA", *inc, str(CUDA_DIR / "nvfp4_ops.cpp")])
    assert r.returncode == 0, r.stderr[-4000:]


def test_build_targets_the_users_gb10_where_nvcc_knows_it():
    """`make build` emits SASS for every arch this nvcc knows among sm_90/100/120/121 (sm_121 is
    the user's DGX Spark) plus compute_120 PTX."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("cuda_build", CUDA_DIR / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    flags = build.gencode_flags(NVCC)
    known = run([NVCC, "--list-gpu-arch"]).stdout.split()
    for arch in ("90", "100", "120", "121"):
        assert (f"-gencode=arch=compute_{arch},code=sm_{arch}" in flags) == (f"compute_{arch}" in known)
    assert ("-gencode=arch=compute_120,code=compute_120" in flags) == ("compute_120" in known)
