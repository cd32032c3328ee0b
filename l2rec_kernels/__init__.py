"""l2rec-kernels: fast inference for L2Rec dual-view personalised LLM recommenders.

Public API only. Importing this package never imports triton kernels, the CUDA extension,
or queries CUDA; those happen on first use.
"""

from ._backend import backend_info
from .models.config import L2RecConfig
from .models.inputs import L2RecOutput
from .models.reference import L2Rec
from .ops.route import route

__all__ = ["L2Rec", "L2RecConfig", "L2RecOutput", "backend_info", "route"]
__version__ = "0.1.0"
