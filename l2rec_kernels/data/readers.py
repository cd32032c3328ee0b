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
| recbole | `user_id:token`, `item_id:token`, `timestamp:float` | `item_id`, `movie_title`, `release_year` |

Every rating counts as an interaction (implicit feedback, as is usual for these sets).
MovieLens text is UTF-8, or Latin-1 where it is not valid UTF-8 (ml-1m's ``movies.dat``,
ml-100k's ``u.item``). Amazon files are JSON lines; the 2014 metadata files as distributed
are Python literals, not JSON, and must be converted first (the error says how).
RecBole atomic files (``.inter``, ``.item``) are tab-separated, unquoted, with a typed
header (``name:type``); without a timestamp field, file order is the time order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._arrow_io import (
    LineNumbers,
    check_ids,
    first_failure,
    read_csv_columns,
    read_json_columns,
    read_lines,
    read_parquet_columns,
    split_lines,
    to_integers,
    to_timestamps,
)
from .errors import DataFileError
from .locate import Located, locate_amazon, locate_movielens, locate_recbole, locate_table
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


# ----------------------------------------------------------------------------- RecBole

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
RECBOLE_TITLE_FIELDS = ("movie_title", "title", "item_name", "name")
RECBOLE_YEAR_FIELDS = ("release_year", "year")


def _recbole_table(path: str) -> tuple[dict[str, pa.ChunkedArray], dict[str, str], np.ndarray]:
    """An atomic file's fields by name (strings), their types from the header, and the line
    number of each row. The header (line 1) is ``name:type`` cells separated by tabs."""
    lines, _ = read_lines(path, latin1_fallback=True)
    if len(lines) == 0 or not lines[0].as_py().strip():
        raise DataFileError(path, "the header line is empty (expected tab-separated name:type cells, "
                                  "e.g. user_id:token)", line=1)
    cells = lines[0].as_py().split("\t")
    names: list[str] = []
    types: dict[str, str] = {}
    for cell in cells:
        name, sep, kind = cell.strip().rpartition(":")
        if not sep or not name:
            raise DataFileError(path, f"header cell {cell!r} is not name:type (types: "
                                      f"{', '.join(RECBOLE_TYPES)})", line=1, field=cell)
        if kind not in RECBOLE_TYPES:
            raise DataFileError(path, f"header cell {cell!r} has an unknown type {kind!r} (types: "
                                      f"{', '.join(RECBOLE_TYPES)})", line=1, field=name)
        if name in types:
            raise DataFileError(path, f"field {name!r} appears twice in the header", line=1, field=name)
        names.append(name)
        types[name] = kind
    # The header has exactly len(names) cells, so it splits like a row; it is then dropped.
    fields, line_numbers = split_lines(lines, "\t", len(names), path)
    return {n: f[1:] for n, f in zip(names, fields)}, types, line_numbers[1:]


def _require(path: str, cols: dict, name: str) -> None:
    if name not in cols:
        raise DataFileError(path, f"no such field in the header (fields: {list(cols)})", line=1, field=name)


def _recbole_times(values: pa.ChunkedArray, path: str, field: str, lines: np.ndarray) -> pa.ChunkedArray:
    """Timestamps: int64 when every value is an integer, else float64 (exact for integer
    seconds, never float32); anything else (empty, NaN, text) raises naming its line."""
    values = pc.utf8_trim_whitespace(values)
    for kind in (pa.int64(), pa.float64()):
        try:
            out = pc.cast(values, kind)
            break
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    else:
        def ok(a: int, b: int) -> bool:
            try:
                pc.cast(values[a:b], pa.float64())
                return True
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return False
        i = first_failure(len(values), ok)
        raise DataFileError(path, f"expected a number, got {values[i].as_py()!r}", line=int(lines[i]),
                            field=field)
    if pa.types.is_floating(out.type):
        bad = np.flatnonzero(~np.isfinite(out.to_numpy()))
        if bad.size:
            i = int(bad[0])
            raise DataFileError(path, f"expected a finite number, got {values[i].as_py()!r}",
                                line=int(lines[i]), field=field)
    return out


def _recbole_titles(path: str, item_field: str, title_field: str | None) -> TitleSource | None:
    cols, _, lines = _recbole_table(path)
    if title_field is not None:
        _require(path, cols, title_field)
    else:
        title_field = next((f for f in RECBOLE_TITLE_FIELDS if f in cols), None)
        if title_field is None:
            return None  # an .item file with features but no titles
    _require(path, cols, item_field)
    titles = cols[title_field]
    year_field = next((f for f in RECBOLE_YEAR_FIELDS if f in cols), None)
    if year_field is not None:
        year = pc.utf8_trim_whitespace(cols[year_field])
        has = pc.and_(pc.greater(pc.binary_length(year), 0),
                      pc.greater(pc.binary_length(pc.utf8_trim_whitespace(titles)), 0))
        titles = pc.if_else(has, pc.binary_join_element_wise(titles, " (", year, ")", ""), titles)
    return TitleSource(path, check_ids(cols[item_field], path, item_field, lines), titles, lines,
                       field=title_field)


def read_recbole(path: str, *, user_field: str = "user_id", item_field: str = "item_id",
                 time_field: str | None = None, title_field: str | None = None,
                 titles_path: str | None = None) -> Interactions:
    """RecBole atomic files: a ``.inter`` file (or the folder holding exactly one) and the
    ``.item`` file of the same stem beside it (``titles_path`` overrides).

    Fields and their types come from the header (``name:type``, types ``token``,
    ``token_seq``, ``float``, ``float_seq``); the user, item and time fields are RecBole's
    defaults ``user_id``, ``item_id`` and ``timestamp`` unless named. Without a timestamp
    field (and none named), file order is the time order: timestamps are the row index.
    Timestamps are read exactly (int64, or float64 when some value has a fraction). Titles
    come from the ``.item`` file's ``title_field``, else the first of ``movie_title``,
    ``title``, ``item_name``, ``name`` present (no such field: no titles), with the year
    appended as ``"<title> (<year>)"`` when a ``release_year`` or ``year`` field is present
    and non-empty."""
    located = locate_recbole(path)
    if titles_path is not None:
        located.titles = titles_path
    file = located.interactions
    cols, _, lines = _recbole_table(file)
    _require(file, cols, user_field)
    _require(file, cols, item_field)
    users = check_ids(cols[user_field], file, user_field, lines)
    items = check_ids(cols[item_field], file, item_field, lines)
    if time_field is None and "timestamp" not in cols:
        ts = pa.chunked_array([pa.array(np.arange(len(lines), dtype=np.int64))])
    else:
        time_field = time_field or "timestamp"
        _require(file, cols, time_field)
        ts = _recbole_times(cols[time_field], file, time_field, lines)
    titles = _recbole_titles(located.titles, item_field, title_field) if located.titles else None
    return Interactions(users, items, ts, titles, located)


READERS_OPTIONS = {
    "movielens": {"titles_path"},
    "amazon2014": {"titles_path"}, "amazon2018": {"titles_path"}, "amazon2023": {"titles_path"},
    "csv": {"user_col", "item_col", "time_col", "title_col", "delimiter"},
    "parquet": {"user_col", "item_col", "time_col", "title_col"},
    "recbole": {"user_field", "item_field", "time_field", "title_field", "titles_path"},
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
    if fmt == "recbole":
        return read_recbole(path, **options)
    return read_table(path, fmt, **options)
