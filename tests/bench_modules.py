"""Access to the benchmark's modules, for the GPU tests that run its real shapes."""

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(name: str):
    """bench/<name>.py. bench/ is no package (its modules import each other by name), so it
    is on sys.path just for the import."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
