"""l2rec-kernels: fast inference for L2Rec dual-view personalised LLM recommenders.

Public API only. Importing this package never imports triton kernels, the CUDA extension,
or queries CUDA; those happen on first use.
"""

from ._backend import backend_info
from .models.config import L2RecConfig
from .models.inputs import L2RecOutput

__all__ = ["L2RecConfig", "L2RecOutput", "backend_info"]
__version__ = "0.1.0"
