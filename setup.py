"""Build script: the Python package always, the CUDA extension ``l2rec_kernels._C`` only
where it can be built.

Switches (environment variables):
  L2REC_SKIP_CUDA_BUILD=1   never build the extension.
  L2REC_FORCE_CUDA_BUILD=1  build it even when torch has no CUDA runtime here (e.g. a CPU
                            build machine with nvcc producing wheels for GPU hosts); a
                            build error is then an error, not a warning.
  TORCH_CUDA_ARCH_LIST      architectures to build for; defaults to Hopper, "9.0a".

Without the extension every op still works: the Triton and PyTorch paths cover it, and
``l2rec_kernels.backend_info()`` says why the extension is absent.
"""

from __future__ import annotations

import glob
import os
import warnings

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _cuda_extension():
    """Return (ext_modules, cmdclass), or ([], {}) with a warning when we must skip."""
    if _truthy("L2REC_SKIP_CUDA_BUILD"):
        print("l2rec-kernels: L2REC_SKIP_CUDA_BUILD set; not building the CUDA extension")
        return [], {}
    force = _truthy("L2REC_FORCE_CUDA_BUILD")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        warnings.warn(
            "l2rec-kernels: torch is not importable at build time (install torch first and "
            "build with --no-build-isolation); skipping the optional CUDA extension.",
            stacklevel=1,
        )
        return [], {}
    if CUDA_HOME is None:
        warnings.warn("l2rec-kernels: nvcc/CUDA_HOME not found; skipping the CUDA extension.",
                      stacklevel=1)
        return [], {}
    if torch.version.cuda is None and not force:
        warnings.warn(
            "l2rec-kernels: this torch has no CUDA support; skipping the CUDA extension "
            "(set L2REC_FORCE_CUDA_BUILD=1 to build it anyway).",
            stacklevel=1,
        )
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    if not sources:
        return [], {}
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    ext = CUDAExtension(
        name="l2rec_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr"],
        },
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()

setup(
    packages=find_packages(include=["l2rec_kernels", "l2rec_kernels.*"])
    + find_packages(where="python", include=["l2rec_serving", "l2rec_serving.*"]),
    package_dir={"l2rec_serving": "python/l2rec_serving"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
