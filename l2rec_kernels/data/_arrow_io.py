"""File reading on pyarrow, with errors that name the file, the line and the field.

The fast path never loops over lines in Python: files are memory-mapped (compressed ones
are streamed through pyarrow's codecs, detected from the extension: ``.gz``, ``.bz2``,
``.zst``, ``.lz4``), parsed by ``pyarrow.csv`` / ``pyarrow.json``, and fields are split and
converted with ``pyarrow.compute``. Only once a problem is known does a *diagnosis* pass
look for the exact line, so the location costs nothing on good files.

Three readers:

* ``read_lines`` + ``split_lines``: a file as one string per physical line (pyarrow.csv with
  a delimiter that text never holds and no quoting), split on a separator of any length
  with ``pyarrow.compute.split_pattern``. This is how MovieLens' ``::`` files are read
  (pyarrow.csv takes one-character delimiters only) and the ``|``/tab files with no quoting.
  Row i is line i + 1 exactly, because empty lines are kept; blank (whitespace-only) lines
  are then skipped.
* ``read_csv_columns``: a real CSV with a header (quoted fields, e.g. titles with commas).
  pyarrow skips empty lines, so a row's line number is found by counting non-empty lines.
* ``read_json_columns``: JSON lines with an explicit schema (other fields are ignored, not
  parsed into columns). pyarrow skips blank lines and reports errors per block, so the
  diagnosis re-reads the lines and checks each with the standard ``json`` module.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from .errors import DataFileError

# A byte that never occurs in the text files read line-wise: the ASCII record separator.
_NO_DELIMITER = "\x1e"
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
# JSON blocks: one object must fit in a block, and Amazon's metadata lines can be long.
_JSON_BLOCK = 32 << 20


def open_input(path: str) -> pa.NativeFile:
    """The file memory-mapped, or a decompressing stream for a compressed file."""
    compression = _COMPRESSION.get(os.path.splitext(path)[1].lower())
    try:
        if compression is None:
            return pa.memory_map(path, "r")
        return pa.input_stream(path, compression=compression)
    except (OSError, pa.ArrowException) as e:
        raise DataFileError(path, f"cannot open: {e}") from None


def _is_utf8_error(e: Exception) -> bool:
    return "invalid UTF8" in str(e)


def read_lines(path: str, *, latin1_fallback: bool = False) -> tuple[pa.ChunkedArray, str]:
    """Every physical line of ``path`` as a string (empty lines included, newline dropped),
    and the encoding used: UTF-8, or Latin-1 when ``latin1_fallback`` and the file is not
    valid UTF-8 (old MovieLens files are Latin-1)."""
    encodings = ("utf8", "latin-1") if latin1_fallback else ("utf8",)
    for encoding in encodings:
        try:
            return _read_lines(path, encoding), encoding
        except pa.ArrowInvalid as e:
            if _is_utf8_error(e) and encoding != encodings[-1]:
                continue
            if _is_utf8_error(e):
                raise DataFileError(path, "is not valid UTF-8 text") from None
            line = _first_bad_line_number(path, encoding)
            raise DataFileError(path, "contains the control character 0x1e (record separator), "
                                      "which no text line of these formats holds", line=line) from None
    raise AssertionError("unreachable")


def _lines_options(encoding: str, use_threads: bool = True, handler=None):
    return dict(
        read_options=pcsv.ReadOptions(column_names=["line"], encoding=encoding, use_threads=use_threads),
        parse_options=pcsv.ParseOptions(delimiter=_NO_DELIMITER, quote_char=False, double_quote=False,
                                         escape_char=False, ignore_empty_lines=False,
                                         invalid_row_handler=handler),
        convert_options=pcsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False,
                                            quoted_strings_can_be_null=False))


def _read_lines(path: str, encoding: str) -> pa.ChunkedArray:
    with open_input(path) as f:
        return pcsv.read_csv(f, **_lines_options(encoding))["line"]


def _first_bad_line_number(path: str, encoding: str) -> int | None:
    # Serial reading numbers the rows; with empty lines kept, row number = line number.
    found: list[int | None] = []

    def handler(row):
        found.append(row.number)
        return "error"

    with contextlib.suppress(pa.ArrowInvalid), open_input(path) as f:
        pcsv.read_csv(f, **_lines_options(encoding, use_threads=False, handler=handler))
    return found[0] if found else None


def split_lines(lines: pa.ChunkedArray, sep: str, num_fields: int, path: str, *,
                at_least: bool = False, keep: Sequence[int] | None = None
                ) -> tuple[list[pa.ChunkedArray], np.ndarray]:
    """Split each non-blank line on ``sep`` into ``num_fields`` fields (exactly, or at least
    that many when ``at_least``). Returns the fields (those at the indices in ``keep``, or
    the first ``num_fields``) and the 1-based line number of each row. A line with another
    count of fields raises, naming it."""
    # Blank = empty or whitespace only; both tests are cheap (no string is copied).
    blank = pc.or_(pc.equal(pc.binary_length(lines), 0), pc.utf8_is_space(lines))
    blank = blank.to_numpy(zero_copy_only=False)
    if blank.any():
        line_numbers = np.flatnonzero(~blank) + 1
        lines = lines.filter(pa.array(~blank))
    else:
        line_numbers = np.arange(1, len(lines) + 1)
    parts = pc.split_pattern(lines, sep)
    counts = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(counts < num_fields if at_least else counts != num_fields)
    if bad.size:
        i = int(bad[0])
        want = f"at least {num_fields}" if at_least else str(num_fields)
        raise DataFileError(path, f"malformed line: expected {want} fields separated by {sep!r}, got "
                                  f"{int(counts[i])}: {_show(lines[i].as_py())}", line=int(line_numbers[i]))
    return [pc.list_element(parts, j) for j in (range(num_fields) if keep is None else keep)], line_numbers


def _show(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def first_failure(n: int, ok: Callable[[int, int], bool]) -> int:
    """The smallest i in [0, n) such that ``ok(0, i + 1)`` is False, given that ``ok(0, n)``
    is False and failure is monotone in the prefix length: bisection over vectorised checks,
    so locating a bad value costs O(log n) whole-array operations, not a loop per row."""
    lo, hi = 0, n  # ok(0, lo) holds (empty prefix); ok(0, hi) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(0, mid):
            lo = mid
        else:
            hi = mid
    return lo


def _casts(arr: pa.ChunkedArray, to: pa.DataType) -> bool:
    try:
        pc.cast(arr, to)
        return True
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False


def check_ids(values: pa.ChunkedArray, path: str, field: str, line_numbers: np.ndarray | LineNumbers, *,
              unit: str = "line") -> pa.ChunkedArray:
    """Ids as trimmed strings; an empty (or null) id raises naming its line."""
    values = pc.utf8_trim_whitespace(pc.cast(values, pa.string()))
    empty = pc.fill_null(pc.equal(pc.binary_length(values), 0), True).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(empty)
    if bad.size:
        raise DataFileError(path, "missing or empty id", line=int(line_numbers[bad[0]]), field=field,
                            unit=unit)
    return values


def to_integers(values: pa.ChunkedArray, path: str, field: str, line_numbers: np.ndarray | LineNumbers, *,
                unit: str = "line") -> pa.ChunkedArray:
    """Strings -> int64; the first value that is not an integer raises naming its line."""
    values = pc.utf8_trim_whitespace(values)
    if _casts(values, pa.int64()):
        return pc.cast(values, pa.int64())
    i = first_failure(len(values), lambda a, b: _casts(values[a:b], pa.int64()))
    raise DataFileError(path, f"expected an integer, got {_show(values[i].as_py())}",
                        line=int(line_numbers[i]), field=field, unit=unit)


def to_timestamps(values: pa.ChunkedArray, path: str, field: str, line_numbers: np.ndarray | LineNumbers,
                  *, unit: str = "line") -> pa.ChunkedArray:
    """A timestamp column -> numbers that sort in time order: integers stay int64, other
    numbers become float64, dates and date-times (ISO 8601 strings, or Arrow temporal
    types) become int64 in their unit (only the order matters). Nulls, NaN and anything
    else raise naming the line."""
    t = values.type
    if pa.types.is_date(t):  # days (date32) or milliseconds (date64): both ints underneath
        values = pc.cast(pc.cast(values, pa.int32() if pa.types.is_date32(t) else pa.int64()), pa.int64())
    elif pa.types.is_timestamp(t) or pa.types.is_integer(t):
        values = pc.cast(values, pa.int64())
    elif pa.types.is_floating(t):
        values = pc.cast(values, pa.float64())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        values = _strings_to_timestamps(pc.utf8_trim_whitespace(values), path, field, line_numbers, unit)
    else:
        raise DataFileError(path, f"a timestamp column must hold numbers or dates, got type {t}",
                            field=field)
    nulls = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
    if nulls.size:
        raise DataFileError(path, "missing timestamp", line=int(line_numbers[nulls[0]]), field=field,
                            unit=unit)
    if pa.types.is_floating(values.type):
        nan = np.flatnonzero(np.isnan(values.to_numpy(zero_copy_only=False)))
        if nan.size:
            raise DataFileError(path, "timestamp is NaN", line=int(line_numbers[nan[0]]), field=field,
                                unit=unit)
    return values


_TIME_KINDS = (pa.int64(), pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", tz="UTC"))


def _strings_to_timestamps(values: pa.ChunkedArray, path: str, field: str, line_numbers, unit: str):
    for kind in _TIME_KINDS:  # the first kind every value converts to
        if _casts(values, kind):
            return pc.cast(pc.cast(values, kind), pa.int64()) if pa.types.is_timestamp(kind) \
                else pc.cast(values, kind)
    # The first value from which no single kind takes the prefix: a bad value, or the
    # first of another kind than the values before it.
    i = first_failure(len(values), lambda a, b: any(_casts(values[a:b], k) for k in _TIME_KINDS))
    raise DataFileError(path, f"expected a number or an ISO 8601 date/time (all values of one kind), "
                              f"got {_show(str(values[i].as_py()))}",
                        line=int(line_numbers[i]), field=field, unit=unit)


def _header(path: str, delimiter: str, encoding: str) -> list[str]:
    # Only the first line is read (a header never spans lines here), then parsed by pyarrow
    # so quoting rules are the same as for the data rows.
    with open_input(path) as f:
        head = b""
        while b"\n" not in head:
            block = f.read(1 << 16)
            if not block:
                break
            head += block
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    if not first.strip():
        raise DataFileError(path, "the header line is empty (expected column names)", line=1)
    table = pcsv.read_csv(pa.BufferReader(first + b"\n"),
                          read_options=pcsv.ReadOptions(encoding=encoding),
                          parse_options=pcsv.ParseOptions(delimiter=delimiter))
    return table.column_names


def read_csv_columns(path: str, columns: Sequence[str], *, optional: Sequence[str] = (),
                     delimiter: str = ",", latin1_fallback: bool = False
                     ) -> tuple[dict[str, pa.ChunkedArray], LineNumbers]:
    """Columns of a CSV file with a header, all as strings. ``columns`` must exist (a
    missing one raises naming the header line); ``optional`` ones are read when present.
    Returns the columns by name and the line numbers of the rows."""
    encodings = ["utf8", "latin-1"] if latin1_fallback else ["utf8"]
    while True:
        encoding = encodings.pop(0)
        try:
            names = _header(path, delimiter, encoding)
            break
        except pa.ArrowInvalid as e:
            if not (encodings and _is_utf8_error(e)):
                problem = "is not valid UTF-8 text" if _is_utf8_error(e) else f"cannot parse the header: {e}"
                raise DataFileError(path, problem, line=1) from None
    for c in columns:
        if c not in names:
            raise DataFileError(path, f"no such column in the header (columns: {names})", line=1, field=c)
    wanted = list(columns) + [c for c in optional if c in names and c not in columns]

    def read(enc: str, use_threads: bool = True, handler=None) -> pa.Table:
        with open_input(path) as f:
            return pcsv.read_csv(
                f,
                read_options=pcsv.ReadOptions(encoding=enc, use_threads=use_threads),
                parse_options=pcsv.ParseOptions(delimiter=delimiter, invalid_row_handler=handler),
                convert_options=pcsv.ConvertOptions(
                    include_columns=wanted, column_types={c: pa.string() for c in wanted},
                    strings_can_be_null=False, quoted_strings_can_be_null=False))

    while True:
        try:
            table = read(encoding)
            break
        except pa.ArrowInvalid as e:
            if _is_utf8_error(e):
                if encodings:  # the header was UTF-8 but a later line is not: Latin-1
                    encoding = encodings.pop(0)
                    continue
                raise DataFileError(path, "is not valid UTF-8 text") from None
            raise _csv_parse_error(path, read, encoding, e) from None
    return {c: table[c] for c in wanted}, LineNumbers.csv(path, encoding)


def _csv_parse_error(path: str, read, encoding: str, error: Exception) -> DataFileError:
    # Read again serially: only then does pyarrow number the bad row (it counts non-empty
    # lines, the header included), which maps back to a physical line.
    found: list[tuple[int | None, str]] = []

    def handler(row):
        found.append((row.number, row.text))
        return "error"

    with contextlib.suppress(pa.ArrowInvalid):
        read(encoding, use_threads=False, handler=handler)
    if not found or found[0][0] is None:
        return DataFileError(path, f"cannot parse: {error}")
    number, text = found[0]
    line = LineNumbers.csv(path, encoding, header=False)[number - 1]
    return DataFileError(path, f"malformed line: wrong number of fields ({_show(text)})", line=int(line))


class LineNumbers:
    """Row index -> 1-based line number for a file pyarrow read while skipping lines,
    computed on first use (an error path only, so good files never pay for it).

    ``pyarrow.csv`` skips empty lines (data row i is the (i + 2)-th non-empty line, after
    the header); ``pyarrow.json`` skips blank (whitespace-only) lines too."""

    def __init__(self, path: str, *, encoding: str = "utf8", header: bool = True,
                 skip_whitespace: bool = False) -> None:
        self._path, self._encoding, self._header = path, encoding, header
        self._skip_whitespace, self._numbers = skip_whitespace, None

    @classmethod
    def csv(cls, path: str, encoding: str, header: bool = True) -> LineNumbers:
        return cls(path, encoding=encoding, header=header)

    @classmethod
    def json(cls, path: str) -> LineNumbers:
        return cls(path, header=False, skip_whitespace=True)

    def __getitem__(self, i):
        if self._numbers is None:
            lines, _ = read_lines(self._path, latin1_fallback=self._encoding != "utf8")
            skipped = pc.equal(pc.binary_length(lines), 0)
            if self._skip_whitespace:
                skipped = pc.or_(skipped, pc.utf8_is_space(lines))
            numbers = np.flatnonzero(~skipped.to_numpy(zero_copy_only=False)) + 1
            self._numbers = numbers[1:] if self._header else numbers
        return self._numbers[i]


def read_parquet_columns(path: str, columns: Sequence[str], *, optional: Sequence[str] = ()
                         ) -> tuple[dict[str, pa.ChunkedArray], np.ndarray]:
    """Columns of a Parquet file (or a folder of Parquet files, read as one data set),
    memory-mapped. Returns the columns by name and the 1-based row numbers."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path) if os.path.isfile(path) else pq.ParquetDataset(path).schema
    except (OSError, pa.ArrowException) as e:
        raise DataFileError(path, f"cannot read as Parquet: {e}") from None
    names = schema.names
    for c in columns:
        if c not in names:
            raise DataFileError(path, f"no such column (columns: {names})", field=c)
    wanted = list(columns) + [c for c in optional if c in names and c not in columns]
    try:
        table = pq.read_table(path, columns=wanted, memory_map=True)
    except (OSError, pa.ArrowException) as e:
        raise DataFileError(path, f"cannot read as Parquet: {e}") from None
    return {c: table[c] for c in wanted}, np.arange(1, table.num_rows + 1)


# --------------------------------------------------------------------------- JSON lines

_PY_LITERAL_HINT = (" (it looks like a Python literal with single quotes, as in the 2014 Amazon "
                    "metadata files; convert the file to JSON lines first, e.g. "
                    "`python -c \"import ast,json,sys; [print(json.dumps(ast.literal_eval(l))) "
                    "for l in sys.stdin if l.strip()]\" < meta_X.json > meta_X.jsonl`)")


def read_json_columns(path: str, fields: dict[str, pa.DataType], *, required: Sequence[str]
                      ) -> dict[str, pa.ChunkedArray]:
    """Fields of a JSON-lines file (one object per line) with the given types; other fields
    are skipped. A ``required`` field that is missing or null, a value of the wrong type, or
    a line that is not a JSON object raises naming its line and field."""
    schema = pa.schema(list(fields.items()))
    try:
        with open_input(path) as f:
            table = pjson.read_json(f, read_options=pjson.ReadOptions(block_size=_JSON_BLOCK),
                                    parse_options=pjson.ParseOptions(explicit_schema=schema,
                                                                     unexpected_field_behavior="ignore"))
    except pa.ArrowInvalid as e:
        raise _diagnose_json(path, fields, required, str(e)) from None
    for name in required:
        if table[name].null_count:
            raise _diagnose_json(path, fields, required, f"field {name!r} missing or null")
    return {name: table[name] for name in fields}


_JSON_KINDS = {"int64": (int,), "string": (str,)}


def _diagnose_json(path: str, fields: dict[str, pa.DataType], required: Sequence[str],
                   arrow_message: str) -> DataFileError:
    """Find the first line pyarrow could not take, checking each line with the standard
    ``json`` module (an error path only: good files never get here)."""
    try:
        lines, _ = read_lines(path)
    except DataFileError as e:
        return e
    number = 0
    for chunk in lines.chunks:
        for text in chunk.to_pylist():
            number += 1
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                hint = _PY_LITERAL_HINT if text.lstrip().startswith("{'") else ""
                return DataFileError(path, f"malformed line: not valid JSON ({e.msg}){hint}", line=number)
            if not isinstance(obj, dict):
                return DataFileError(path, f"malformed line: expected a JSON object, got "
                                           f"{type(obj).__name__}", line=number)
            for name, typ in fields.items():
                value = obj.get(name)
                if value is None:
                    if name in required:
                        return DataFileError(path, "missing field" if name not in obj else "null value",
                                             line=number, field=name)
                    continue
                kinds = _JSON_KINDS.get(str(typ), ())
                if not isinstance(value, kinds) or isinstance(value, bool):
                    want = {"int64": "an integer", "string": "a string"}[str(typ)]
                    return DataFileError(path, f"expected {want}, got {_show(json.dumps(value))}",
                                         line=number, field=name)
    return DataFileError(path, f"cannot read as JSON lines: {arrow_message}")
