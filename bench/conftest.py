"""pytest set-up for the benchmark tests (``python -m pytest bench/ --benchmark-only``).

``make test`` runs ``pytest tests`` only (pyproject's testpaths), so nothing here is
collected there. TRITON_INTERPRET is deliberately not set: the benchmarks time Triton
kernels only on CUDA tensors (the CPU interpreter is for correctness tests, not timing),
so on a machine without a GPU no benchmark imports triton at all.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the benchmark modules import each other by name

# bench/load_test.py matches pytest's *_test.py pattern but is an HTTP load-test script.
collect_ignore = ["load_test.py"]
