"""Synthetic users files for the built-in tiny model (``make score-demo``, tests, the benchmark).

Users come from the tiny model's ``SyntheticCatalogue`` (each prefers a genre), with ids
0..n-1. ``bad_rows`` appends rows that a job must reject, one per kind it can meet in a
Parquet file, so a demo run shows ``OUT/rejected/`` too.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import torch

# (user_id, history) rows that a job must reject, and the kind each gets.
BAD_ROWS = [
    (None, [3, 4], "missing_user_id"),
    ("", [3, 4], "malformed_user_id"),
    ("empty", [], "empty_history"),
    ("unknown", [5, 10**6], "unknown_item"),
    ("dup", [1, 2], "duplicate_user_id"),
    ("dup", [2, 3], "duplicate_user_id"),
]


def synthetic_users(n: int, num_items: int = 200, seed: int = 0, max_history: int = 8) -> list[list[int]]:
    """n histories of 3..max_history items from the tiny model's synthetic catalogue."""
    from l2rec_kernels.synthetic import SyntheticCatalogue

    cat = SyntheticCatalogue(num_items=num_items, num_genres=10, max_history=max_history)
    histories, _, _ = cat.sample_users(n, torch.Generator().manual_seed(seed))
    return histories


def write_users(path: str, n: int, num_items: int = 200, seed: int = 0, bad_rows: bool = False) -> int:
    """A Parquet users file of ``n`` synthetic users (ids as text, "u0".."u<n-1>", so the bad
    rows fit the same column), plus ``BAD_ROWS`` when asked; returns its row count."""
    ids = [f"u{i}" for i in range(n)]
    histories = synthetic_users(n, num_items, seed)
    if bad_rows:
        ids += [u for u, _, _ in BAD_ROWS]
        histories += [h for _, h, _ in BAD_ROWS]
    table = pa.table({"user_id": pa.array(ids, pa.string()),
                      "history": pa.array(histories, pa.list_(pa.int64()))})
    pq.write_table(table, path)
    return table.num_rows
