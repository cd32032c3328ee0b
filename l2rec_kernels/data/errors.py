"""The error every reader raises for a bad file: where (file, line, field) and what.

``DataFileError`` is a ``ValueError``, so callers that catch ``ValueError`` for bad input
keep working; its attributes let tools point at the spot without parsing the message.
"""

from __future__ import annotations

import os


class DataFileError(ValueError):
    """A problem in an interaction or title file.

    Attributes:
        path: the file.
        line: 1-based line number (for Parquet: 1-based row number), or None when the
            problem is not tied to one line (e.g. a missing column).
        field: the field or column concerned, or None.
        problem: what was wrong, without the location.
    """

    def __init__(self, path: str | os.PathLike, problem: str, *, line: int | None = None,
                 field: str | None = None, unit: str = "line") -> None:
        self.path, self.line, self.field, self.problem = os.fspath(path), line, field, problem
        where = self.path
        if line is not None:
            where += f", {unit} {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
