"""`make cuda-check`: compile every csrc/ source as setup.py would, with warnings as errors,
on a machine without a GPU; then link the extension and load it.

1. Each ``csrc/*.cu`` with nvcc for sm_90a (override with L2REC_CUDA_CHECK_ARCH, e.g.
   ``compute_80,code=sm_80``), each ``csrc/*.cpp`` with the host C++ compiler (as
   torch's BuildExtension does), against the installed torch's headers and Python's,
   with torch's own extension defines and nvcc flags. Warnings are errors
   (``-Werror all-warnings`` for nvcc, ``-Wall -Wextra -Werror`` for the host compiler);
   torch, Python and CUDA headers are ``-isystem``, so only our code's warnings count.
2. Link ``_C.so`` against libtorch and libcudart, all in a temporary directory.
3. Load it with this (possibly CPU-only) torch and run the tests that need the built
   library but no GPU (schemas, fake impls, C++ argument checks): pytest on
   tests/test_cuda_ext.py and tests/test_batch_metadata.py with L2REC_CUDA_EXT_PATH set.
   Loading also proves the library needs nothing from torch's CUDA libraries at load.

Exit status 0 only if everything passed. Nothing is written outside the temporary
directory (kept with --keep DIR).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _nvcc() -> str:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found is None:
        sys.exit("cuda-check: nvcc not found (put it on PATH or set CUDA_HOME)")
    return found


def _cuda_home(nvcc: str) -> str:
    """The toolkit holding libcudart (nvcc on PATH may be a wrapper script elsewhere)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"]
    for home in filter(None, candidates):
        for lib in ("lib64", "lib"):
            if glob.glob(os.path.join(home, lib, "libcudart.so*")):
                return home
    sys.exit(f"cuda-check: no libcudart.so found under {[c for c in candidates if c]}; set CUDA_HOME")


def _run(cmd: list[str], what: str) -> tuple[str, float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    log = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        return what, elapsed, f"FAILED ({proc.returncode}): {shlex.join(cmd)}\n{log}"
    if log:  # nvcc/g++ print nothing on a clean compile; anything else is suspect
        return what, elapsed, f"FAILED (unexpected output): {shlex.join(cmd)}\n{log}"
    return what, elapsed, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and keep it")
    parser.add_argument("--no-load", action="store_true", help="compile and link only")
    args = parser.parse_args()

    import torch
    from torch.utils import cpp_extension

    t0 = time.perf_counter()
    nvcc = _nvcc()
    cuda_home = _cuda_home(nvcc)
    cxx = os.environ.get("CXX", "c++")
    sources = sorted(glob.glob(os.path.join(HERE, "*.cu")) + glob.glob(os.path.join(HERE, "*.cpp")))
    if not sources:
        print("cuda-check: no sources in csrc/")
        return 1

    system_includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    isystem = [flag for inc in system_includes for flag in ("-isystem", inc)]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    defines = ["-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
               f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    # setup.py's flags, plus what torch's BuildExtension adds for nvcc (the
    # __CUDA_NO_HALF_* defines, --expt-relaxed-constexpr), taken from torch itself.
    arch = os.environ.get("L2REC_CUDA_CHECK_ARCH", "arch=compute_90a,code=sm_90a")
    nvcc_flags = ["-O3", "-std=c++17", *cpp_extension.COMMON_NVCC_FLAGS, "-gencode", arch,
                  "-Werror", "all-warnings", "-Xptxas=-Werror",
                  "-Xcompiler", "-fPIC,-Wall,-Wextra,-Werror"]
    cxx_flags = ["-O3", "-std=c++17", "-fPIC", "-Wall", "-Wextra", "-Werror"]

    build = args.keep or tempfile.mkdtemp(prefix="l2rec-cuda-check-")
    os.makedirs(build, exist_ok=True)
    try:
        jobs, objects = [], []
        for src in sources:
            name = os.path.basename(src)
            obj = os.path.join(build, name + ".o")  # .cu and .cpp of one stem stay apart
            objects.append(obj)
            if src.endswith(".cu"):
                cmd = [nvcc, *nvcc_flags, *defines, *isystem, "-I", HERE, "-c", src, "-o", obj]
            else:
                cmd = [cxx, *cxx_flags, *defines, *isystem, "-I", HERE, "-c", src, "-o", obj]
            jobs.append((cmd, f"compile {name}"))
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda job: _run(*job), jobs))
        failed = False
        for what, elapsed, error in results:
            print(f"cuda-check: {what}: {'ok' if not error else 'FAILED'} ({elapsed:.1f}s)")
            if error:
                print(error)
                failed = True
        if failed:
            return 1

        torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        cuda_lib = os.path.join(cuda_home, "lib64")
        if not os.path.isdir(cuda_lib):
            cuda_lib = os.path.join(cuda_home, "lib")
        so = os.path.join(build, "_C.so")
        link = [cxx, "-shared", *objects, "-o", so, f"-L{torch_lib}", f"-L{cuda_lib}",
                "-lc10", "-ltorch", "-ltorch_cpu", "-lcudart",
                f"-Wl,-rpath,{torch_lib}", f"-Wl,-rpath,{cuda_lib}"]
        what, elapsed, error = _run(link, "link _C.so")
        print(f"cuda-check: {what}: {'ok' if not error else 'FAILED'} ({elapsed:.1f}s)")
        if error:
            print(error)
            return 1

        if not args.no_load:
            env = dict(os.environ, L2REC_CUDA_EXT_PATH=so)
            tests = ["tests/test_cuda_ext.py", "tests/test_batch_metadata.py"]
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env)
            print(f"cuda-check: load and test the built _C.so: "
                  f"{'ok' if proc.returncode == 0 else 'FAILED'} ({time.perf_counter() - start:.1f}s)")
            if proc.returncode != 0:
                return 1
        print(f"cuda-check: passed in {time.perf_counter() - t0:.1f}s ({len(sources)} sources, {arch})")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
