"""Interaction files -> per-user item sequences and the leave-one-out split.

    from l2rec_kernels.data import load_sequences
    data = load_sequences("movielens:ml-1m", min_interactions=5, max_history=20, verbose=True)
    data.split("test")[0]   # Example(user=0, history=[...], target=..., seen=[...])

Formats (``FORMATS``): ``movielens`` (``ratings.dat``/``movies.dat``, ``u.data``/``u.item``,
``ratings.csv``/``movies.csv``), ``amazon2014``, ``amazon2018``, ``amazon2023`` (reviews and
metadata JSON lines), ``csv`` and ``parquet`` (user, item, timestamp and optional title
columns), ``recbole`` (RecBole atomic files: ``<name>.inter`` + ``<name>.item``; or
``recbole:ml-100k``, the example set of an installed RecBole, e.g. the ``.venv-peers`` that
``make peers`` builds). See ``locate`` for the folder layouts, ``readers`` for the fields,
``pipeline`` for filtering and ids, ``titles`` for the title rules, ``sequences`` for the split.
"""

from .errors import DataFileError
from .loader import load_sequences
from .locate import FORMATS
from .pipeline import from_interactions
from .sequences import Example, ExampleSplit, SequenceData
from .titles import placeholder_title

__all__ = ["FORMATS", "DataFileError", "Example", "ExampleSplit", "SequenceData", "from_interactions",
           "load_sequences", "placeholder_title"]
