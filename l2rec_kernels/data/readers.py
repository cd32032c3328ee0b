r"""One reader per format: its files -> interaction rows (user, item, timestamp, in file order)
and, where the format has them, titles. Only the column mapping is written here; reading,
splitting and converting are pyarrow's (see ``_arrow_io``).

| format | interaction fields | title file fields |
|---|---|---|
| movielens dat | `UserID::MovieID::Rating::Timestamp` | `MovieID::Title::Genres` |
| movielens tab | `user<TAB>item<TAB>rating<TAB>timestamp` | `movie id\|title\|...` (`u.item`) |
| movielens csv | header `userId,movieId,...,timestamp` | header `movieId,title,...` |
| amazon2014/2018 | `reviewerID`, `asin`, `unixReviewTime` | `asin`, `title` |
| amazon2023 | `user_id`, `parent_asin`, `timestamp` | `parent_asin`, `title` |
| csv / parquet | `user`, `item`, `timestamp` [, `title`] | (the same file) |

Every rating counts as an interaction (implicit feedback, as is usual for these sets).
MovieLens text is UTF-8, or Latin-1 where it is not valid UTF-8 (ml-1m's ``movies.dat``,
ml-100k's ``u.item``). Amazon files are JSON lines; the 2014 metadata files as distributed
are Python literals, not JSON, and must be converted first (the error says how).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

from ._arrow_io import (
    LineNumbers,
    check_ids,
    read_csv_columns,
    read_json_columns,
    read_lines,
    read_parquet_columns,
    split_lines,
    to_integers,
    to_timestamps,
)
from .errors import DataFileError
from .locate import Located, locate_amazon, locate_movielens, locate_table
from .titles import TitleSource


@dataclass
class Interactions:
    """Rows as read: parallel columns in file order, optional titles, and the files used."""

    users: pa.ChunkedArray
    items: pa.ChunkedArray
    timestamps: pa.ChunkedArray
    titles: TitleSource | None
    files: Located


# ----------------------------------------------------------------------------- MovieLens

def _movielens_rows(path: str, kind: str) -> tuple[pa.ChunkedArray, pa.ChunkedArray, pa.ChunkedArray]:
    if kind == "csv":
        cols, lines = read_csv_columns(path, ["userId", "movieId", "timestamp"], latin1_fallback=True)
        user, item, ts = cols["userId"], cols["movieId"], cols["timestamp"]
        names = ("userId", "movieId", "timestamp")
    else:
        text, _ = read_lines(path, latin1_fallback=True)
        sep = "::" if kind == "dat" else "\t"
        (user, item, ts), lines = split_lines(text, sep, 4, path, keep=(0, 1, 3))  # no rating
        names = ("user", "item", "timestamp")
    return (check_ids(user, path, names[0], lines), check_ids(item, path, names[1], lines),
            to_integers(ts, path, names[2], lines))


def _movielens_titles(path: str) -> TitleSource:
    kind = os.path.basename(path)
    if kind.endswith(".csv"):
        cols, lines = read_csv_columns(path, ["movieId", "title"], latin1_fallback=True)
        ids, titles, id_field = cols["movieId"], cols["title"], "movieId"
    else:
        text, _ = read_lines(path, latin1_fallback=True)
        if kind.endswith(".dat"):  # MovieID::Title::Genres
            (ids, titles), lines = split_lines(text, "::", 3, path, keep=(0, 1))
        else:  # u.item: movie id | title | release date | ... | 19 genre flags
            (ids, titles), lines = split_lines(text, "|", 2, path, at_least=True)
        id_field = "movie id"
    return TitleSource(path, check_ids(ids, path, id_field, lines), titles, lines)


def read_movielens(path: str, *, titles_path: str | None = None) -> Interactions:
    """MovieLens ratings (``ratings.dat``, ``u.data`` or ``ratings.csv``, or their folder)
    and titles (``movies.dat``, ``u.item``, ``movies.csv``; ``titles_path`` overrides)."""
    located = locate_movielens(path)
    if titles_path is not None:
        located.titles = titles_path
    users, items, ts = _movielens_rows(located.interactions, located.kind)
    titles = _movielens_titles(located.titles) if located.titles else None
    return Interactions(users, items, ts, titles, located)


# ----------------------------------------------------------------------------- Amazon

_AMAZON_FIELDS = {
    "amazon2014": ("reviewerID", "asin", "unixReviewTime", "asin"),
    "amazon2018": ("reviewerID", "asin", "unixReviewTime", "asin"),
    "amazon2023": ("user_id", "parent_asin", "timestamp", "parent_asin"),
}


def read_amazon(path: str, fmt: str, *, titles_path: str | None = None) -> Interactions:
    """Amazon reviews (JSON lines) of the 2014, 2018 or 2023 release, with titles from the
    metadata file (``meta_<Cat>.json[l]``; ``titles_path`` overrides)."""
    user_f, item_f, time_f, meta_id_f = _AMAZON_FIELDS[fmt]
    located = locate_amazon(path, fmt)
    if titles_path is not None:
        located.titles = titles_path
    reviews = located.interactions
    cols = read_json_columns(reviews, {user_f: pa.string(), item_f: pa.string(), time_f: pa.int64()},
                             required=(user_f, item_f, time_f))
    lines = LineNumbers.json(reviews)
    users = check_ids(cols[user_f], reviews, user_f, lines)
    items = check_ids(cols[item_f], reviews, item_f, lines)
    titles = None
    if located.titles:
        meta = located.titles
        mcols = read_json_columns(meta, {meta_id_f: pa.string(), "title": pa.string()}, required=(meta_id_f,))
        mlines = LineNumbers.json(meta)
        meta_ids = check_ids(mcols[meta_id_f], meta, meta_id_f, mlines)
        titles = TitleSource(meta, meta_ids, mcols["title"], mlines)
    return Interactions(users, items, cols[time_f], titles, located)


# ----------------------------------------------------------------------------- CSV / Parquet

def read_table(path: str, fmt: str, *, user_col: str = "user", item_col: str = "item",
               time_col: str = "timestamp", title_col: str | None = None,
               delimiter: str | None = None) -> Interactions:
    """A generic CSV (with a header) or Parquet file with user, item and timestamp columns
    and, optionally, a title column (``title`` when present; naming ``title_col`` makes it
    required). Column names are overridable; the CSV delimiter is a tab for ``*.tsv`` files
    and a comma otherwise unless ``delimiter`` is given. Timestamps may be numbers or dates
    (ISO 8601 strings, or Parquet temporal columns)."""
    located = locate_table(path, fmt)
    file = located.interactions
    required = [user_col, item_col, time_col] + ([title_col] if title_col else [])
    optional = [] if title_col else ["title"]
    unit = "row" if fmt == "parquet" else "line"
    if fmt == "parquet":
        cols, lines = read_parquet_columns(file, required, optional=optional)
    else:
        if delimiter is None:
            delimiter = "\t" if ".tsv" in os.path.basename(file) else ","
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise ValueError(f"delimiter must be one character, got {delimiter!r}")
        cols, lines = read_csv_columns(file, required, optional=optional, delimiter=delimiter)
    users = check_ids(cols[user_col], file, user_col, lines, unit=unit)
    items = check_ids(cols[item_col], file, item_col, lines, unit=unit)
    ts = to_timestamps(cols[time_col], file, time_col, lines, unit=unit)
    name = title_col or "title"
    titles = None
    if name in cols:
        titles = TitleSource(file, items, cols[name].cast(pa.string()), lines, field=name, per_row=True,
                             unit=unit)
    return Interactions(users, items, ts, titles, located)


READERS_OPTIONS = {
    "movielens": {"titles_path"},
    "amazon2014": {"titles_path"}, "amazon2018": {"titles_path"}, "amazon2023": {"titles_path"},
    "csv": {"user_col", "item_col", "time_col", "title_col", "delimiter"},
    "parquet": {"user_col", "item_col", "time_col", "title_col"},
}


def read_interactions(fmt: str, path: str, **options) -> Interactions:
    """Dispatch to the format's reader, checking its options."""
    unknown = set(options) - READERS_OPTIONS[fmt]
    if unknown:
        raise TypeError(f"format {fmt!r} takes no option(s) {sorted(unknown)}; it takes "
                        f"{sorted(READERS_OPTIONS[fmt]) or 'none'}")
    if "titles_path" in options and options["titles_path"] is not None:
        options["titles_path"] = os.fspath(options["titles_path"])
        if not os.path.isfile(options["titles_path"]):
            raise DataFileError(options["titles_path"], "no such title file")
    if fmt == "movielens":
        return read_movielens(path, **options)
    if fmt.startswith("amazon"):
        return read_amazon(path, fmt, **options)
    return read_table(path, fmt, **options)
