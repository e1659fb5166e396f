"""Build the nvfp4 torch extension and put it at scripts/nvfp4lab/_nvfp4_C*.so (`make build`).

CPU kernels always. CUDA kernels too when torch is a CUDA build and nvcc is found: SASS for sm_90
(H100/H200) and, where this nvcc knows them, Blackwell sm_100 (B200), sm_120 (RTX 50xx) and sm_121
(the user's DGX Spark GB10: sm_120 SASS would run there too, but its own SASS is what ptxas tunes
for it), plus compute_120 PTX for later chips.
Environment: NVFP4_CPU_ONLY=1 skips CUDA; MAX_JOBS caps ninja's parallel jobs.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from setuptools import setup
from torch.utils import cpp_extension as cpp

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "cuda"
DEST = ROOT / "scripts" / "nvfp4lab"
NAME = "_nvfp4_C"


def nvcc_path():
    if cpp.CUDA_HOME is None:
        return None
    nvcc = Path(cpp.CUDA_HOME) / "bin" / "nvcc"
    return str(nvcc) if nvcc.exists() else shutil.which("nvcc")


def gencode_flags(nvcc: str) -> list[str]:
    """-gencode flags for sm_90 and the Blackwell targets this nvcc supports."""
    try:
        known = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        known = ["compute_90"]
    flags = ["-gencode=arch=compute_90,code=sm_90"]
    if "compute_100" in known:
        flags.append("-gencode=arch=compute_100,code=sm_100")
    if "compute_120" in known:
        flags += ["-gencode=arch=compute_120,code=sm_120", "-gencode=arch=compute_120,code=compute_120"]
    if "compute_121" in known:
        flags.append("-gencode=arch=compute_121,code=sm_121")
    return flags


def openmp_ok() -> bool:
    """Does the C++ compiler take -fopenmp? (at::parallel_for is serial without it.)"""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.cpp"
        src.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        r = subprocess.run([cxx, "-fopenmp", str(src), "-o", str(Path(d) / "t")], capture_output=True)
        return r.returncode == 0


def main() -> int:
    t0 = time.time()
    nvcc = nvcc_path()
    with_cuda = torch.version.cuda is not None and nvcc is not None and os.environ.get("NVFP4_CPU_ONLY") != "1"
    omp = ["-fopenmp"] if openmp_ok() else []
    # No -std: torch adds the standard its headers need (C++17 for older torch, C++20 since 2.10);
    # our own sources are plain C++17.
    cxx_flags = ["-O3"] + omp
    # The shared libstdc++ by name: a g++ whose own lib dir holds only libstdc++.a (the device's
    # /opt/gcc wrapper) links a private static copy into the .so, whose iostreams are never
    # initialised there: every TORCH_CHECK message with a number in it then segfaults instead of
    # raising (seen on the H200, 2026-12-04). With the shared one the .so uses torch's libstdc++.
    link_flags = omp + ["-l:libstdc++.so.6"]
    sources = [str(SRC / "nvfp4_ops.cpp")]
    if with_cuda:
        # No --use_fast_math: the quantiser needs IEEE division (the kernels also spell out __fdiv_rn).
        nvcc_flags = ["-O3", "--threads=0"] + gencode_flags(nvcc)
        ext = cpp.CUDAExtension(NAME, sources + [str(SRC / "nvfp4_kernels.cu"), str(SRC / "decode_attention.cu"),
                                          str(SRC / "adam8.cu")],
                                extra_compile_args={"cxx": cxx_flags + ["-DNVFP4_WITH_CUDA"], "nvcc": nvcc_flags},
                                extra_link_args=link_flags)
    else:
        ext = cpp.CppExtension(NAME, sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    variant = "cuda" if with_cuda else "cpu"
    build = ROOT / "build" / f"nvfp4_{variant}"
    print(f"nvfp4 build: {variant} kernels, OpenMP {'on' if omp else 'off'}"
          + (f", nvcc {nvcc}: {' '.join(nvcc_flags[2:])}" if with_cuda else ""), flush=True)
    setup(name="nvfp4_ext", ext_modules=[ext],
          cmdclass={"build_ext": cpp.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
          script_args=["-q", "build_ext", "--build-lib", str(build / "lib"), "--build-temp", str(build / "tmp")])
    built = glob.glob(str(build / "lib" / f"{NAME}*.so"))
    if len(built) != 1:
        print(f"nvfp4 build: expected one {NAME}*.so under {build / 'lib'}, found {built}", file=sys.stderr)
        return 1
    for old in glob.glob(str(DEST / f"{NAME}*.so")):
        os.remove(old)
    shutil.copy2(built[0], DEST / Path(built[0]).name)
    print(f"nvfp4 build: {DEST / Path(built[0]).name} ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
