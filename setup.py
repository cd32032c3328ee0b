"""Build script: the Python package always, the CUDA extension ``l2rec_kernels._C`` only
where it can be built.

By default the extension is built when torch has CUDA support and torch finds a CUDA
toolkit (``torch.utils.cpp_extension.CUDA_HOME``); otherwise the install warns and goes on
without it. Where it is built, a compile or link error fails the install.

Switches (environment variables):
  L2REC_SKIP_CUDA_BUILD=1   never build the extension.
  L2REC_FORCE_CUDA_BUILD=1  always build it; anything that stops the build (no torch, no CUDA
                            toolkit, a compile or link error) fails the install instead of
                            warning. The toolkit is the one a CUDA torch finds, else
                            CUDA_HOME or CUDA_PATH when set, else the one holding the ``nvcc``
                            on PATH, else /usr/local/cuda (it needs bin/nvcc and
                            include/cuda_runtime.h).
                            With a CPU-only torch (e.g. a build machine without a GPU) it
                            compiles against that torch's headers and links libc10, libtorch,
                            libtorch_cpu and libcudart only (a CPU torch has no libc10_cuda or
                            libtorch_cuda; the sources use no torch CUDA API, see
                            csrc/README.md), like ``make cuda-check``. The result is for a
                            CUDA torch of the same version; on the CPU torch it loads (where
                            libcudart is on the loader path) and its ops accept only CUDA
                            tensors.
  TORCH_CUDA_ARCH_LIST      architectures to build for; defaults to Hopper, "9.0a".

Without the extension every op still works: the Triton and PyTorch paths cover it, and
``l2rec_kernels.backend_info()`` says why the extension is absent.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import warnings

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _skip(reason: str, force: bool):
    """Without FORCE: warn and build no extension. With FORCE: fail the install."""
    if force:
        sys.exit(f"l2rec-kernels: L2REC_FORCE_CUDA_BUILD is set but the CUDA extension cannot be "
                 f"built: {reason}")
    warnings.warn(f"l2rec-kernels: {reason}; skipping the optional CUDA extension.", stacklevel=2)
    return [], {}


def _is_toolkit(home: str) -> bool:
    return (os.path.isfile(os.path.join(home, "bin", "nvcc"))
            and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")))


def _find_cuda_home() -> str | None:
    """CUDA_HOME or CUDA_PATH when set (only it), else the first toolkit among the one holding
    the ``nvcc`` on PATH and /usr/local/cuda. A toolkit has bin/nvcc and include/cuda_runtime.h
    (the ``nvcc`` on PATH may be a wrapper script outside it)."""
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        return explicit if _is_toolkit(explicit) else None
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(os.path.realpath(nvcc))),
                       os.path.dirname(os.path.dirname(nvcc))]
    candidates.append("/usr/local/cuda")
    return next((home for home in candidates if _is_toolkit(home)), None)


def _cuda_extension():
    """Return (ext_modules, cmdclass); ([], {}) with a warning when we skip (without FORCE)."""
    if _truthy("L2REC_SKIP_CUDA_BUILD"):
        print("l2rec-kernels: L2REC_SKIP_CUDA_BUILD set; not building the CUDA extension")
        return [], {}
    force = _truthy("L2REC_FORCE_CUDA_BUILD")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return _skip("torch is not importable at build time (install torch first and build "
                     "with --no-build-isolation)", force)
    if torch.version.cuda is None and not force:
        return _skip("this torch has no CUDA support (set L2REC_FORCE_CUDA_BUILD=1 to build it "
                     "anyway with a CUDA toolkit)", False)
    # A CUDA torch has looked for the toolkit already (None: it found none); a CPU torch never
    # looks, so with FORCE we do.
    cuda_home = cpp_extension.CUDA_HOME
    if cuda_home is None and force:
        cuda_home = _find_cuda_home()
    if cuda_home is None:
        where = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        if where:
            return _skip(f"CUDA_HOME/CUDA_PATH {where!r} is not a CUDA toolkit (bin/nvcc and "
                         "include/cuda_runtime.h)", force)
        return _skip("no CUDA toolkit found (nvcc/CUDA_HOME)", force)
    # torch leaves CUDA_HOME None when it was built without CUDA; its build helpers read the
    # module global for nvcc and the include/library paths.
    cpp_extension.CUDA_HOME = cuda_home
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    if not sources:
        return _skip("no sources in csrc/", force)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    ext = cpp_extension.CUDAExtension(
        name="l2rec_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={
            "cxx": ["-O3", "-std=c++17"],
            "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr"],
        },
    )
    if torch.version.cuda is None:  # CPU torch: no libc10_cuda / libtorch_cuda to link
        ext.libraries = [lib for lib in ext.libraries if lib not in ("c10_cuda", "torch_cuda")]
        print(f"l2rec-kernels: L2REC_FORCE_CUDA_BUILD: building the CUDA extension with "
              f"{cuda_home} against CPU-only torch {torch.__version__}")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()

setup(
    packages=find_packages(include=["l2rec_kernels", "l2rec_kernels.*"])
    + find_packages(where="python", include=["l2rec_serving", "l2rec_serving.*"]),
    package_dir={"l2rec_serving": "python/l2rec_serving"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
