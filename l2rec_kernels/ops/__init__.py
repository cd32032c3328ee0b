"""The ops, one name each across ops, tests and benchmarks: ``dpmoe_linear``, ``route``,
``topk_items``, ``batch_metadata``.

Layout per op (Liger-Kernel's layering): ``<op>.py`` holds the public function (argument
checks, the backend choice, the differentiable torch path); ``_<op>_triton.py`` the Triton
kernel and its launcher (``batch_metadata`` has none: torch and CUDA only);
``_triton_util.py`` registers every Triton launcher as a ``torch.library`` op with a fake
implementation and launches kernels; ``_cuda_ext.py`` is the one Python module of the CUDA
extension (``route`` and ``batch_metadata``). Each op's backends and what they serve are
one table, ``l2rec_kernels._dispatch.TABLE``, and ``_dispatch.select`` picks one (explicit,
or ``"auto"`` through the measured cache of ``l2rec_kernels._autotune``). Nothing here
imports triton or the extension, or queries CUDA, at import time.
"""
