"""The package's version, read from its installed metadata (pyproject.toml is its one home)."""

from importlib import metadata

try:
    __version__ = metadata.version("l2rec-kernels")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
