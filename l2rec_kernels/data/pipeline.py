"""Interaction rows -> ``SequenceData``: de-duplication, k-core filtering, id remapping and
per-user time order, all vectorised (pyarrow for the string ids, numpy for the rest).

Order of the steps, and what each counts in ``stats``:

1. ``rows_read``: the interaction rows of the file, in file order.
2. ``duplicates_removed``: rows repeating an earlier row's (user, item, timestamp) exactly
   (a data error in some Amazon dumps); the first is kept. ``dedupe=False`` keeps them.
3. k-core: users and items with fewer than ``min_interactions`` rows are removed, again
   and again until every remaining user and item has at least that many
   (``kcore_users_removed``, ``kcore_items_removed``, ``kcore_rows_removed``,
   ``kcore_rounds``: the passes that removed something).
4. Ids: users are numbered 0, 1, ... and items 1, 2, ... (0 is padding) in order of their
   first appearance in the file among the rows kept, so the numbering is deterministic and
   follows the file.
5. Time order: each user's items sorted by timestamp with a stable sort, so equal
   timestamps keep the file's order.

The result counts ``users``, ``items``, ``interactions`` and ``repeat_interactions`` (rows
whose user had that item before, at another time: kept, since re-consumption is data).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .sequences import SequenceData, check_max_history
from .titles import TitleSource, resolve_titles


def _as_strings(values) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        arr = values
    elif isinstance(values, pa.Array):
        arr = pa.chunked_array([values])
    else:
        arr = pa.chunked_array([pa.array(np.asarray(values).tolist() if isinstance(values, np.ndarray)
                                         else list(values))])
    return pc.cast(arr, pa.string()) if arr.type != pa.string() else arr


def _encode(values: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes in order of first appearance, and the distinct values."""
    uniques = pc.unique(values)
    codes = pc.index_in(values, value_set=uniques).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, uniques


def _stable_order(*keys: np.ndarray) -> np.ndarray:
    """Row order sorted by the keys (first key most significant); ties keep row order."""
    if len(keys[0]) == 0:
        return np.zeros(0, dtype=np.int64)
    table = pa.table({f"k{j}": k for j, k in enumerate(keys)})
    order = pc.sort_indices(table, sort_keys=[(f"k{j}", "ascending") for j in range(len(keys))])
    return order.to_numpy().astype(np.int64)


def _first_appearance_ids(codes: np.ndarray, num_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """New ids 0.. for the codes present in ``codes``, by first appearance; returns the new id
    of each row and the old code of each new id."""
    present, first = np.unique(codes, return_index=True)
    old_of_new = present[np.argsort(first, kind="stable")]
    new_of_old = np.full(num_codes, -1, dtype=np.int64)
    new_of_old[old_of_new] = np.arange(len(old_of_new))
    return new_of_old[codes], old_of_new


def _check_min_interactions(k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"min_interactions must be a non-negative int, got {k!r}")


def build_sequence_data(users, items, timestamps, *, titles: TitleSource | None = None,
                        min_interactions: int = 5, max_history: int | None = 20,
                        missing_title: str = "placeholder", dedupe: bool = True,
                        verbose: bool = False, source: str = "interactions") -> SequenceData:
    """Interaction rows (parallel user ids, item ids and timestamps, in file order) ->
    ``SequenceData`` (see the module docstring for the steps and counts). Ids may be
    strings or integers (they are kept as strings); timestamps any numbers that sort in
    time order."""
    _check_min_interactions(min_interactions)
    check_max_history(max_history)
    users, items = _as_strings(users), _as_strings(items)
    if isinstance(timestamps, (pa.ChunkedArray, pa.Array)):
        ts = timestamps.to_numpy(zero_copy_only=False) if isinstance(timestamps, pa.Array) else \
            timestamps.to_numpy()
    else:
        ts = np.asarray(timestamps)
    if not (len(users) == len(items) == len(ts)):
        raise ValueError(f"users, items and timestamps must have one entry per row, got "
                         f"{len(users)}, {len(items)} and {len(ts)}")
    if ts.dtype.kind not in "iuf":
        raise TypeError(f"timestamps must be numbers, got dtype {ts.dtype}")
    n = len(ts)
    stats: dict[str, int] = {"rows_read": n}
    ucode, user_values = _encode(users)
    icode, item_values = _encode(items)
    # Arrow's multi-key sort is stable (equal keys keep file order) and much faster than
    # numpy's lexsort; one sort by (user, item, time) finds duplicates and repeats.
    by_pair = _stable_order(ucode, icode, ts)

    keep = np.ones(n, dtype=bool)
    if dedupe and n:
        uo, io, to = ucode[by_pair], icode[by_pair], ts[by_pair]
        same = (uo[1:] == uo[:-1]) & (io[1:] == io[:-1]) & (to[1:] == to[:-1])
        keep[by_pair[1:][same]] = False  # the later rows of each group
    stats["duplicates_removed"] = int(n - keep.sum())

    users_before = np.unique(ucode[keep]).size
    items_before = np.unique(icode[keep]).size
    rows_before = int(keep.sum())
    rounds = 0
    while min_interactions > 1:
        user_count = np.bincount(ucode[keep], minlength=len(user_values))
        item_count = np.bincount(icode[keep], minlength=len(item_values))
        drop = keep & ((user_count[ucode] < min_interactions) | (item_count[icode] < min_interactions))
        if not drop.any():
            break
        keep &= ~drop
        rounds += 1
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        raise ValueError(f"{source}: no interactions left after k-core filtering with min_interactions="
                         f"{min_interactions} (read {n} rows, {users_before} users, {items_before} items); "
                         f"lower min_interactions")
    new_u, user_codes = _first_appearance_ids(ucode[kept], len(user_values))
    new_i, item_codes = _first_appearance_ids(icode[kept], len(item_values))
    new_i += 1  # item 0 is padding
    stats.update(kcore_users_removed=users_before - len(user_codes),
                 kcore_items_removed=items_before - len(item_codes),
                 kcore_rows_removed=rows_before - len(kept), kcore_rounds=rounds)

    # Time order per user; the stable sort keeps timestamp ties in file order.
    order = _stable_order(new_u, ts[kept])
    flat = new_i[order].tolist()
    counts = np.bincount(new_u, minlength=len(user_codes))
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    sequences = [flat[a:b] for a, b in zip(starts, ends)]

    pairs = by_pair[keep[by_pair]]  # kept rows, still grouped by (user, item)
    pu, pi = ucode[pairs], icode[pairs]
    stats.update(users=len(user_codes), items=len(item_codes), interactions=len(kept),
                 repeat_interactions=int(((pu[1:] == pu[:-1]) & (pi[1:] == pi[:-1])).sum()))

    item_ids = item_values.take(pa.array(item_codes)).to_pylist()
    user_ids = user_values.take(pa.array(user_codes)).to_pylist()
    title_list = None
    if titles is not None:
        title_list, title_stats = resolve_titles(titles, item_ids, missing_title)
        stats.update(title_stats)
    data = SequenceData(sequences=sequences, item_ids=item_ids, user_ids=user_ids, titles=title_list,
                        stats=stats, max_history=max_history)
    if verbose:
        print(describe(source, stats, min_interactions, titles), file=sys.stderr)
    return data


def describe(source: str, stats: dict[str, int], min_interactions: int,
             titles: TitleSource | None = None) -> str:
    """A short report of what was read, removed and kept (printed when verbose)."""
    lines = [f"{source}: read {stats['rows_read']} interaction rows"]
    if stats.get("duplicates_removed"):
        lines.append(f"  removed {stats['duplicates_removed']} exact duplicate rows (same user, item, time)")
    rounds = stats["kcore_rounds"]
    lines.append(f"  k-core (each user and item >= {min_interactions} interactions, {rounds} "
                 f"round{'' if rounds == 1 else 's'}): removed {stats['kcore_users_removed']} users, "
                 f"{stats['kcore_items_removed']} items, {stats['kcore_rows_removed']} rows")
    lines.append(f"  kept {stats['users']} users, {stats['items']} items, {stats['interactions']} "
                 f"interactions ({stats['repeat_interactions']} repeats of a user's earlier item)")
    if titles is None:
        lines.append("  titles: none")
    else:
        extra = ""
        if "title_rows" in stats:
            extra = f", {stats['title_rows']} title rows read"
        lines.append(f"  titles: from {titles.path}{extra}; {stats['items_without_title']} items without "
                     f"a title (placeholder 'item <id>')")
    return "\n".join(lines)


def from_interactions(users: Sequence, items: Sequence, timestamps: Sequence, *,
                      titles: dict | None = None, min_interactions: int = 5,
                      max_history: int | None = 20, missing_title: str = "placeholder",
                      dedupe: bool = True, verbose: bool = False) -> SequenceData:
    """``SequenceData`` from in-memory rows: parallel ``users``, ``items`` and ``timestamps``
    (lists or arrays, in the order a file would list them) and optionally ``titles``, a
    dict from raw item id to title. The same steps as ``load_sequences``."""
    title_source = None
    if titles is not None:
        if not isinstance(titles, dict):
            raise TypeError(f"titles must be a dict from item id to title, got {type(titles).__name__}")
        keys = _as_strings(list(titles.keys()))
        title_source = TitleSource(path="<titles dict>", items=keys,
                                   titles=pa.chunked_array([pa.array(list(titles.values()), pa.string())]),
                                   line_numbers=np.arange(1, len(titles) + 1), field="title",
                                   unit="entry")
    return build_sequence_data(users, items, timestamps, titles=title_source,
                               min_interactions=min_interactions, max_history=max_history,
                               missing_title=missing_title, dedupe=dedupe, verbose=verbose,
                               source="in-memory interactions")
