"""l2rec-kernels: fast inference for L2Rec dual-view personalised LLM recommenders.

Public API only. Importing this package never imports triton kernels, the CUDA extension,
or queries CUDA; those happen on first use.
"""

from ._backend import backend_info
from ._version import __version__ as __version__
from .models.compiled import compile_for_serving
from .models.config import L2RecConfig
from .models.fused import FusedL2Rec
from .models.inputs import L2RecOutput
from .models.reference import L2Rec
from .ops.batch_metadata import batch_metadata
from .ops.dpmoe_linear import dpmoe_linear
from .ops.route import route
from .ops.topk_items import topk_items

__all__ = [
    "FusedL2Rec",
    "L2Rec",
    "L2RecConfig",
    "L2RecOutput",
    "backend_info",
    "batch_metadata",
    "compile_for_serving",
    "dpmoe_linear",
    "route",
    "topk_items",
]
