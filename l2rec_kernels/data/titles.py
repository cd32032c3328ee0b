"""Item titles: from a title file (MovieLens ``movies.dat``, Amazon metadata, ...) or a title
column of the interaction rows, matched to the items that survive filtering.

Rules (the same for every format):

* An item's title is the first non-empty title given for its id, in file order.
* An id given twice with *different* non-empty titles is an error naming the later line
  (checked for the items that are used: a title file may describe items that never
  appear in the interactions, and those are not read further).
* An item with no title (absent from the title file, or only with an empty/null title)
  gets the placeholder ``"item <raw id>"`` and is counted in ``stats["items_without_title"]``
  (printed when verbose), because real metadata (Amazon's above all) lacks titles for some
  items; with ``missing_title="error"`` it is an error instead.
* Titles are otherwise kept as they are (no trimming or cleaning): prompts are built from
  them by the serving package's ``TitlePromptBuilder``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataFileError

MISSING_TITLE_POLICIES = ("placeholder", "error")


def placeholder_title(raw_id: str) -> str:
    """The title given to an item without one."""
    return f"item {raw_id}"


@dataclass
class TitleSource:
    """Titles as read: one row per (id, title) pair in file order.

    Attributes:
        path: the file they came from.
        items: raw item ids (strings).
        titles: titles (strings; null or blank means none).
        line_numbers: row -> 1-based line (or row) number, for errors.
        field: the title field's name in that file.
        per_row: True when the titles came with the interaction rows (generic CSV/Parquet),
            where repeating an id with its title on every row is the norm.
        unit: "line", or "row" for Parquet.
    """

    path: str
    items: pa.ChunkedArray
    titles: pa.ChunkedArray
    line_numbers: Any
    field: str = "title"
    per_row: bool = False
    unit: str = "line"


def resolve_titles(source: TitleSource, item_ids: Sequence[str], missing_title: str = "placeholder"
                   ) -> tuple[list[str], dict[str, int]]:
    """The title of each item in ``item_ids`` (item i at index i - 1) and counts:
    ``items_without_title`` and, for a title file, ``title_rows`` (rows read) and
    ``title_rows_repeated`` (rows repeating a used id with the same title)."""
    if missing_title not in MISSING_TITLE_POLICIES:
        raise ValueError(f"missing_title must be one of {MISSING_TITLE_POLICIES}, got {missing_title!r}")
    n_items = len(item_ids)
    codes = pc.index_in(source.items, value_set=pa.array(list(item_ids), pa.string()))
    codes = pc.fill_null(codes, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    titles = source.titles
    present = pc.fill_null(pc.greater(pc.binary_length(pc.utf8_trim_whitespace(titles)), 0), False)
    present = present.to_numpy(zero_copy_only=False)
    used = codes >= 0
    rows = np.flatnonzero(used & present)
    title_codes = pc.fill_null(pc.index_in(titles, value_set=pc.unique(titles)), -1)
    title_codes = title_codes.to_numpy(zero_copy_only=False).astype(np.int64)

    # The first row of each item (rows are in file order, the sort is stable).
    item_of_row = codes[rows]
    order = np.argsort(item_of_row, kind="stable")
    sorted_items = item_of_row[order]
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = sorted_items[1:] != sorted_items[:-1]
    first_rows, first_items = rows[order][is_first], sorted_items[is_first]
    first_row_of_item = np.full(n_items, -1, dtype=np.int64)
    first_row_of_item[first_items] = first_rows

    # Disagreement: a row whose title differs from its item's first title.
    disagree = title_codes[rows] != title_codes[first_row_of_item[item_of_row]]
    if disagree.any():
        row = int(rows[np.flatnonzero(disagree)[0]])
        first = int(first_row_of_item[codes[row]])
        raise DataFileError(
            source.path, f"item {item_ids[codes[row]]!r} has the title {titles[row].as_py()!r} here but "
                         f"{titles[first].as_py()!r} on {source.unit} {int(source.line_numbers[first])}",
            line=int(source.line_numbers[row]), field=source.field, unit=source.unit)

    out: list[str | None] = [None] * n_items
    for i, t in zip(first_items.tolist(), titles.take(pa.array(first_rows, pa.int64())).to_pylist()):
        out[i] = t
    missing = [i for i in range(n_items) if out[i] is None]
    if missing and missing_title == "error":
        i = missing[0]
        empty_rows = np.flatnonzero((codes == i) & ~present)
        if empty_rows.size:
            raise DataFileError(source.path, f"no title for item {item_ids[i]!r} (empty or absent on its "
                                             f"{source.unit})",
                                line=int(source.line_numbers[empty_rows[0]]), field=source.field,
                                unit=source.unit)
        raise DataFileError(source.path, f"no title for item {item_ids[i]!r} ({len(missing)} items have "
                                         f"none; missing_title='placeholder' gives them one)",
                            field=source.field)
    for i in missing:
        out[i] = placeholder_title(item_ids[i])
    stats = {"items_without_title": len(missing)}
    if not source.per_row:
        stats["title_rows"] = len(source.items)
        stats["title_rows_repeated"] = int(len(rows) - len(first_rows))
    return out, stats  # type: ignore[return-value]
