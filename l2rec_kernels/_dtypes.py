"""Floating-point dtype names: the one table the CLIs, the serving spec, the autotune cache
and the benchmark reports read.

Full names are torch's own (``"bfloat16"``: ``str(torch.bfloat16)`` without ``torch.``);
the command lines of ``tune`` and the benchmarks take the short names (``"bf16"``).
"""

from __future__ import annotations

import torch

# name -> dtype, the floating-point dtypes a model or a kernel benchmark runs in
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# short name -> dtype (the same dtypes)
SHORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# Names computed once, here: a dict lookup is what Dynamo traces when a compiled graph
# asks for one (the autotune cache's bucket keys), where str() of a dtype may not be.
_NAMES = {d: str(d).replace("torch.", "") for d in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.bool, torch.int64,
    torch.int32, torch.int16, torch.int8, torch.uint8)}


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name of a dtype without the ``torch.`` prefix (``"bfloat16"``, ``"int64"``)."""
    return _NAMES.get(dtype) or str(dtype).replace("torch.", "")
