"""``StagingSink``: the job's Ray Data writer, into a staging directory.

Each write task of ``Dataset.write_datasink`` writes the rows it is given as (at most) two
Parquet files, ``scores/part-<task>.parquet`` and ``rejected/part-<task>.parquet``
(``output.split``), under the run's staging directory; ``commit`` publishes that directory
only once the whole job has succeeded and its files check out.

Why a retried write cannot leave a duplicate: a file's name depends only on the write
task's index (``TaskContext.task_idx``), which Ray keeps when it retries a task (a dead
worker, a lost node) or re-executes it to rebuild a lost result; its rows are the task's
input blocks, which a re-executed upstream call rebuilds with the same rows. So every
attempt of one task writes the same names, and a later attempt replaces an earlier one.
Each file is written under a temporary name and renamed into place (atomic on one
filesystem), so a writer killed mid-file leaves no truncated part file under that name,
only a temporary one that the commit removes. (Ray's own ``write_parquet`` also names
files by task index, but writes them in place and cannot split one dataset into two
outputs.) ``commit.verify`` checks the result anyway: no user twice, every input row once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from l2rec_kernels._atomic import atomic_write

from .output import split

PARTS = ("scores", "rejected")


def part_name(task_idx: int) -> str:
    return f"part-{task_idx:06d}.parquet"


def write_atomically(table: pa.Table, path: str) -> None:
    """``table`` to ``path`` as Parquet, atomically (``l2rec_kernels._atomic``)."""
    with atomic_write(path, "wb") as f:
        pq.write_table(table, f)


class StagingSink(Datasink):
    """Writes a job's rows (``output.call_schema``) under ``staging/scores`` and
    ``staging/rejected``; each task returns ``{"task", "scores", "rejected"}`` row counts."""

    def __init__(self, staging: str, rows_per_file: int) -> None:
        self.staging, self.rows_per_file = staging, rows_per_file
        self.write_returns: list[dict] = []

    @property
    def min_rows_per_write(self) -> int:
        # Ray Data gathers blocks into one write task until it has this many rows.
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> dict:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        tables = [t for t in tables if t.num_rows]
        counts = {"task": ctx.task_idx, "scores": 0, "rejected": 0}
        if not tables:
            return counts
        for part, table in zip(PARTS, split(pa.concat_tables(tables))):
            if table.num_rows:
                write_atomically(table, os.path.join(self.staging, part, part_name(ctx.task_idx)))
                counts[part] = table.num_rows
        return counts

    def on_write_complete(self, write_result) -> None:
        # On the driver: what the successful attempt of every write task reported.
        self.write_returns = [r for r in write_result.write_returns if r is not None]

    def get_name(self) -> str:
        return "WriteScores"
