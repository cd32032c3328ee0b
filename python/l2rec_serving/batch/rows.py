"""The users file: how it is read, and which of its rows can be scored.

A users file (or a directory of them) has one row per user:

* ``user_id``: an int or a non-empty string, unique in the whole input;
* ``history``: the user's item ids, oldest first: a list of ints (Parquet, JSON lines), or
  in CSV a JSON list (``"[3, 17, 42]"``) or the ids separated by spaces or commas;
* ``prompt`` (optional): the prompt text. Without it (or where it is null) the prompt is
  built from the history's titles, as the service does.

Formats, by extension or ``fmt``: Parquet (``ray.data.read_parquet``), CSV
(``ray.data.read_csv``, with ``history`` and ``prompt`` read as text so that a row's value
never changes the column's type, and empty cells as null), JSON lines
(``ray.data.read_text``, one JSON object per line, each parsed here with ``json.loads``: so
one line that is not JSON, or whose values have other types than the rest, is one rejected
row instead of a failed read).

A row that cannot be scored is never dropped: ``check_row`` names every problem it has,
and the job writes it under ``OUT/rejected/`` with its reason. Problem kinds (the
``kind`` column; a row with several problems carries the first one's, its ``reason`` all of
them): see ``KINDS``.
"""

from __future__ import annotations

import json
import operator
import os
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

FORMATS = ("parquet", "csv", "json")
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json",
              ".ndjson": "json"}
REQUIRED_COLUMNS = ("user_id", "history")
TEXT_COLUMN = "text"  # read_text's column: one JSON line

KINDS = {
    "unparsable_line": "a JSON-lines line that is not a JSON object",
    "missing_user_id": "no user_id, or null",
    "malformed_user_id": "a user_id that is neither an int nor a non-empty string",
    "duplicate_user_id": "a user_id that more than one row has (every copy is rejected)",
    "malformed_history": "a history that is not a list of int item ids",
    "empty_history": "a history without items",
    "history_too_long": "a history longer than max_history_items",
    "unknown_item": "an item id outside the catalogue (1..num_items)",
    "malformed_prompt": "a prompt that is not text, is empty, or cannot be tokenised",
    "no_prompt": "no prompt, and no titles to build one from the history",
}


def detect_format(path: str, fmt: str | None = None) -> str:
    """``fmt`` if given (checked), else the format named by ``path``'s extension; for a
    directory, that of the files in it."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
        return fmt
    if not os.path.exists(path):
        raise FileNotFoundError(f"users file {path} does not exist")
    names = [path]
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if not n.startswith((".", "_")))
    found = {EXTENSIONS.get(os.path.splitext(n)[1].lower()) for n in names} - {None}
    if len(found) != 1:
        what = "no file with" if not found else f"files of several formats ({sorted(found)}) with"
        raise ValueError(f"users path {path}: {what} a known extension ({', '.join(EXTENSIONS)}); "
                         "name the format with --format")
    return found.pop()


def read_users(path: str, fmt: str, **read_args):
    """The users file as a Ray Dataset of raw rows (``fmt`` from ``detect_format``)."""
    import ray.data

    if fmt == "parquet":
        # Ray 2.60's new Parquet reader (DataContext.use_datasource_v2) lists files by reading
        # their footers in a thread pool: 5 to 12 s per read of one small file on a 2-core
        # machine, where the previous reader takes 0.15 s, and a job reads its input twice.
        # The reader is chosen when the dataset is made, so the caller's setting is restored.
        ctx = ray.data.DataContext.get_current()
        v2 = getattr(ctx, "use_datasource_v2", None)
        if v2 is not None:
            ctx.use_datasource_v2 = False
        try:
            return ray.data.read_parquet(path, **read_args)
        finally:
            if v2 is not None:
                ctx.use_datasource_v2 = v2
    if fmt == "csv":
        import pyarrow.csv as pcsv

        # history and prompt as text whatever they look like; an empty cell is null (for the
        # optional prompt: none given; for history and user_id: missing).
        options = pcsv.ConvertOptions(column_types={"history": pa.string(), "prompt": pa.string()},
                                      strings_can_be_null=True)
        return ray.data.read_csv(path, convert_options=options, **read_args)
    return ray.data.read_text(path, **read_args)


def check_schema(schema, fmt: str, path: str) -> pa.DataType | None:
    """The ``user_id`` column's type (None for JSON lines, whose values are untyped); a
    ValueError naming the file and column when a required column is missing or typed so
    that no row could be valid."""
    if fmt == "json":
        return None
    # (``schema``: a pyarrow Schema or Ray Data's, which has names and types too)
    types = dict(zip(schema.names, schema.types)) if schema is not None else {}
    for col in REQUIRED_COLUMNS:
        if col not in types:
            raise ValueError(f"users file {path} has no {col!r} column (columns: {list(types)}); it "
                             f"needs {list(REQUIRED_COLUMNS)} and may have 'prompt'")
    uid_type = types["user_id"]
    if not (pa.types.is_integer(uid_type) or pa.types.is_string(uid_type)
            or pa.types.is_large_string(uid_type) or pa.types.is_null(uid_type)):
        raise ValueError(f"users file {path}: user_id must be an integer or string column, got {uid_type}")
    return uid_type


# ----------------------------------------------------------------------------- rows
@dataclass
class RawRow:
    """One input row as Python values (``values`` None: a JSON line that did not parse)."""

    values: dict | None
    text: str | None = None  # the line itself (JSON lines): what ``rejected`` keeps

    def as_json(self) -> str:
        """The row as it was, for ``OUT/rejected/``: the line itself for JSON lines, else the
        row's columns as a JSON object."""
        if self.text is not None:
            return self.text
        return json.dumps(self.values, default=_json_default, ensure_ascii=False)


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def raw_rows(table: pa.Table, fmt: str) -> list[RawRow]:
    """A batch of the users dataset as ``RawRow``s (JSON lines parsed here)."""
    if fmt != "json":
        return [RawRow(v) for v in table.to_pylist()]
    rows = []
    for line in table.column(TEXT_COLUMN).to_pylist():
        try:
            values = json.loads(line)
        except ValueError:  # (JSONDecodeError is a ValueError)
            values = None
        rows.append(RawRow(values if isinstance(values, dict) else None, line))
    return rows


@dataclass
class Problem:
    kind: str
    message: str


@dataclass
class CheckedRow:
    """A row after ``check_row``: the user's id, history and prompt text (None: build it),
    or the problems that keep it from being scored."""

    raw: RawRow
    user_id: int | str | None = None
    history: list[int] | None = None
    prompt: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def reject(self, kind: str, message: str) -> None:
        self.problems.append(Problem(kind, message))


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)  # int and numpy integers
    except TypeError:
        return False
    return True


def user_key(value) -> str | None:
    """The key duplicates are found by: the id as text (so 5 and "5" are the same user:
    they would be written as the same id), or None when the id is missing or malformed."""
    if _is_int(value):
        return str(operator.index(value))
    if isinstance(value, str) and value.strip():
        return value
    return None


def _check_user_id(row: CheckedRow, value, duplicates: dict[str, int]) -> None:
    if value is None:
        row.reject("missing_user_id", "user_id is missing")
        return
    key = user_key(value)
    if key is None:
        row.reject("malformed_user_id", f"user_id must be an int or a non-empty string, got {value!r} "
                                        f"({type(value).__name__})")
        return
    row.user_id = operator.index(value) if _is_int(value) else value
    if key in duplicates:
        row.reject("duplicate_user_id", f"user_id {value!r} appears {duplicates[key]} times in the input; "
                                        "every copy is rejected")


_SEPARATORS = re.compile(r"[\s,]+")


def _parse_history_text(text: str) -> list | None:
    """CSV history text -> list of values: a JSON list, or ids separated by spaces/commas."""
    text = text.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) else None
    items = []
    for token in _SEPARATORS.split(text) if text else []:
        try:
            items.append(int(token))
        except ValueError:
            items.append(token)  # reported below as not an int
    return items


def _check_history(row: CheckedRow, value, num_items: int, max_items: int) -> None:
    if isinstance(value, str):
        parsed = _parse_history_text(value)
        if parsed is None:
            row.reject("malformed_history", f"history {value[:80]!r} is neither a JSON list nor ids "
                                            "separated by spaces or commas")
            return
        value = parsed
    if value is None:
        row.reject("empty_history", "history is missing")
        return
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()  # numpy arrays (pandas-written Parquet read back)
    if not isinstance(value, (list, tuple)):
        row.reject("malformed_history", f"history must be a list of item ids, got {type(value).__name__}")
        return
    if not value:
        row.reject("empty_history", "history is empty")
        return
    if len(value) > max_items:
        row.reject("history_too_long", f"history has {len(value)} items; at most {max_items} are accepted "
                                       "(max_history_items)")
        return
    for i, item in enumerate(value):
        if not _is_int(item):
            row.reject("malformed_history", f"history[{i}] must be an int item id, got {item!r} "
                                            f"({type(item).__name__})")
            return
    bad = [(i, int(v)) for i, v in enumerate(value) if not 1 <= v <= num_items]
    if bad:
        i, v = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        row.reject("unknown_item", f"history[{i}] = {v} is not a catalogue item id (1..{num_items}){more}")
        return
    row.history = [int(v) for v in value]


def _check_prompt(row: CheckedRow, value, can_build: bool) -> None:
    if value is None:
        if not can_build:
            row.reject("no_prompt", "the row has no prompt, and the job has no titles to build one from "
                                    "the history (pass --titles)")
        return
    if not isinstance(value, str):
        row.reject("malformed_prompt", f"prompt must be text, got {type(value).__name__}")
    elif not value.strip():
        row.reject("malformed_prompt", "prompt is empty")
    else:
        row.prompt = value


def check_row(raw: RawRow, *, num_items: int, max_history_items: int, duplicates: dict[str, int],
              can_build_prompts: bool) -> CheckedRow:
    """Every problem of one row (``duplicates``: key -> count for the ids seen more than once
    in the whole input, from the job's first pass)."""
    row = CheckedRow(raw)
    if raw.values is None:
        row.reject("unparsable_line", "the line is not a JSON object")
        return row
    v = raw.values
    _check_user_id(row, v.get("user_id"), duplicates)
    _check_history(row, v.get("history"), num_items, max_history_items)
    _check_prompt(row, v.get("prompt"), can_build_prompts)
    return row


# ----------------------------------------------------------------------------- first pass
def user_keys(table: pa.Table, fmt: str) -> pa.Table:
    """A batch -> ``key`` (``user_key`` of each row's id, null when missing or malformed) and
    ``is_int`` (whether the id is an int): what the job's first pass counts."""
    if fmt != "json":
        col = table.column("user_id")
        if pa.types.is_integer(col.type):
            return pa.table({"key": pc.cast(col, pa.string()), "is_int": pc.is_valid(col)})
        if pa.types.is_null(col.type):
            return pa.table({"key": pa.nulls(len(col), pa.string()), "is_int": pa.repeat(False, len(col))})
        key = pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()),
                         pc.cast(col, pa.string()))
        return pa.table({"key": key, "is_int": pa.repeat(False, len(col))})
    keys, is_int = [], []
    for raw in raw_rows(table, fmt):
        value = raw.values.get("user_id") if raw.values is not None else None
        keys.append(user_key(value))
        is_int.append(_is_int(value))
    return pa.table({"key": pa.array(keys, pa.string()), "is_int": pa.array(is_int, pa.bool_())})
