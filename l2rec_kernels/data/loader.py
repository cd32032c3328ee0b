"""``load_sequences``: a ``FORMAT:PATH`` spec -> ``SequenceData``."""

from __future__ import annotations

import os

from .locate import parse_spec
from .pipeline import build_sequence_data
from .readers import read_interactions
from .sequences import SequenceData


def load_sequences(spec: str | os.PathLike, min_interactions: int = 5, max_history: int | None = 20,
                   verbose: bool = False, *, missing_title: str = "placeholder", dedupe: bool = True,
                   **options) -> SequenceData:
    """Read an interaction data set and turn it into per-user item sequences.

    Args:
        spec: ``"FORMAT:PATH"``, FORMAT one of ``FORMATS`` (``movielens``, ``amazon2014``,
            ``amazon2018``, ``amazon2023``, ``csv``, ``parquet``, ``recbole``), PATH a file or
            the folder holding the data set's files as distributed (e.g. an ``ml-1m`` folder;
            see ``l2rec_kernels.data.locate`` for what each format looks for). ``recbole:NAME``
            (e.g. ``recbole:ml-100k``) reads the example data set of an installed RecBole.
        min_interactions: k-core threshold: users and items are removed until each has at
            least this many interactions (0 or 1: no filtering).
        max_history: the default history length of ``split`` examples (None: no limit).
        verbose: print what was read, removed and kept to stderr.
        missing_title: ``"placeholder"`` (an item without a title gets ``"item <raw id>"``,
            counted in ``stats["items_without_title"]``) or ``"error"``.
        dedupe: drop rows repeating an earlier (user, item, timestamp) exactly (counted).
        **options: per format: ``titles_path`` (movielens, amazon*: the title/metadata file,
            instead of the one found beside the data); ``user_col``, ``item_col``,
            ``time_col``, ``title_col`` (csv, parquet: column names, default ``user``,
            ``item``, ``timestamp`` and ``title`` when present) and ``delimiter`` (csv);
            ``user_field``, ``item_field``, ``time_field``, ``title_field``, ``titles_path``
            (recbole: field names, default ``user_id``, ``item_id``, ``timestamp`` (absent:
            file order is time order) and the first of ``movie_title``, ``title``,
            ``item_name``, ``name`` in the ``.item`` file; the ``.item`` file).

    Returns:
        ``SequenceData`` with ``sequences``, ``item_ids``, ``user_ids``, ``titles``,
        ``stats`` and ``split(name)``. ``stats`` counts ``rows_read``,
        ``duplicates_removed``, ``kcore_users_removed``, ``kcore_items_removed``,
        ``kcore_rows_removed``, ``kcore_rounds``, ``users``, ``items``, ``interactions``,
        ``repeat_interactions``, and with titles ``items_without_title`` (and, for a title
        file, ``title_rows``, ``title_rows_repeated``).

    Raises:
        ValueError: an unknown format or a malformed spec; ``DataFileError`` (a
            ``ValueError``) for a bad or missing file, naming the file, the line and the
            field; no interactions left after filtering.
        TypeError: an option the format does not take.
    """
    fmt, path = parse_spec(spec)
    rows = read_interactions(fmt, path, **options)
    source = f"{fmt}:{rows.files.interactions}"
    return build_sequence_data(rows.users, rows.items, rows.timestamps, titles=rows.titles,
                               min_interactions=min_interactions, max_history=max_history,
                               missing_title=missing_title, dedupe=dedupe, verbose=verbose, source=source)
