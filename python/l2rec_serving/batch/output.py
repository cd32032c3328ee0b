"""The output's columns, and the one table a scoring call hands to the writer.

A scoring call returns every row of its batch, scored or rejected, in one Arrow table of a
fixed schema (``call_schema``): so Ray Data moves one dataset, and the writer
(``sink.StagingSink``) splits each block into the two files it becomes:

* ``OUT/scores/``: ``user_id`` (the input's type), ``items`` (list<int64>, best first),
  ``scores`` (list<float32>, descending), and ``preference`` (list<float32>, the user's
  preference vector z, for an approximate-nearest-neighbour index) when asked for;
* ``OUT/rejected/``: ``user_id`` (as text, null when missing), ``kind`` (one of
  ``rows.KINDS``), ``reason`` (every problem, readable) and ``row`` (the input row as JSON,
  or the JSON line as it was).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REJECTED_SCHEMA = pa.schema([("user_id", pa.string()), ("kind", pa.string()), ("reason", pa.string()),
                             ("row", pa.string())])
_LIST_F32 = pa.list_(pa.float32())


def scores_schema(uid_type: pa.DataType, preference: bool) -> pa.Schema:
    fields = [("user_id", uid_type), ("items", pa.list_(pa.int64())), ("scores", _LIST_F32)]
    return pa.schema(fields + ([("preference", _LIST_F32)] if preference else []))


def call_schema(uid_type: pa.DataType, preference: bool) -> pa.Schema:
    """What a scoring call returns: the scores columns, then the rejected ones prefixed
    ``rejected_`` (``rejected_kind`` null: the row was scored)."""
    rejected = [pa.field("rejected_" + f.name, f.type) for f in REJECTED_SCHEMA]
    return pa.schema([*scores_schema(uid_type, preference), *rejected])


def _list_array(rows: Sequence[np.ndarray | None], dtype, arrow_type: pa.DataType) -> pa.Array:
    """Rows of values (None: a null row) -> one Arrow list array, without Python lists."""
    lengths = np.array([0 if r is None else len(r) for r in rows], dtype=np.int32)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [r for r in rows if r is not None]
    values = np.concatenate(present).astype(dtype, copy=False) if present else np.zeros(0, dtype)
    mask = pa.array([r is None for r in rows], pa.bool_())
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, arrow_type.value_type),
                                    type=arrow_type, mask=mask)


def call_table(schema: pa.Schema, user_ids: list, items: list, scores: list, preference: list | None,
               rejected: list[tuple[str | None, str, str, str] | None]) -> pa.Table:
    """One table of ``call_schema``: per row either ``items``/``scores`` (numpy arrays) or a
    ``rejected`` tuple (user_id text, kind, reason, row JSON)."""
    uid_type = schema.field("user_id").type
    as_text = pa.types.is_string(uid_type) or pa.types.is_large_string(uid_type)
    ids = [None if r is not None else (str(u) if as_text else u) for u, r in zip(user_ids, rejected)]
    cols = {"user_id": pa.array(ids, uid_type),
            "items": _list_array(items, np.int64, schema.field("items").type),
            "scores": _list_array(scores, np.float32, schema.field("scores").type)}
    if preference is not None:
        cols["preference"] = _list_array(preference, np.float32, schema.field("preference").type)
    for j, f in enumerate(REJECTED_SCHEMA):
        cols["rejected_" + f.name] = pa.array([None if r is None else r[j] for r in rejected], f.type)
    return pa.table(cols, schema=schema)


def split(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """A ``call_schema`` table -> (scores rows, rejected rows) in their files' schemas."""
    scored = pc.is_null(table.column("rejected_kind"))
    names = [n for n in table.column_names if not n.startswith("rejected_")]
    good = table.filter(scored).select(names)
    bad = table.filter(pc.invert(scored)).select(["rejected_" + f.name for f in REJECTED_SCHEMA])
    return good, bad.rename_columns(REJECTED_SCHEMA.names)
