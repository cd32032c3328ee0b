r"""``FORMAT:PATH`` specs, and finding a data set's files in the folder it is distributed as.

What a folder may hold, per format (the first match wins; compressed variants ``.gz``,
``.bz2``, ``.zst``, ``.lz4`` of the Amazon and CSV files are found too):

| format | interactions | titles (optional) |
|---|---|---|
| movielens | `ratings.dat` (ml-1m, ml-10m: `::`) | `movies.dat` |
| | `u.data` (ml-100k: tab-separated) | `u.item` (`\|`) |
| | `ratings.csv` (ml-latest(-small), ml-20m and later) | `movies.csv` |
| amazon2014 | `reviews_<Cat>_5.json` or `reviews_<Cat>.json` | `meta_<Cat>.json` |
| amazon2018 | `<Cat>_5.json` or `<Cat>.json` | `meta_<Cat>.json` |
| amazon2023 | `<Cat>.jsonl` | `meta_<Cat>.jsonl` |
| csv | the only `*.csv` / `*.tsv` file | (a title column) |
| parquet | every `*.parquet` file, read as one data set | (a title column) |
| recbole | the only `*.inter` file (RecBole atomic file) | `<same stem>.item` |

An Amazon folder must hold one category's reviews (one 5-core or full file); with several,
name the file. Given a file instead of a folder, its title file is looked for beside it by
the same names (``ratings.dat`` -> ``movies.dat``, ``u.data`` or ``u1.base`` -> ``u.item``,
``reviews_Books_5.json.gz`` -> ``meta_Books.json.gz`` or ``meta_Books.json``, ...). A
MovieLens file's kind comes from its name: ``*.dat`` is ``::``-separated, ``*.csv`` has a
header, anything else (``u.data``, ``u1.base``) is tab-separated.

``recbole:NAME``, where NAME is not an existing path but a bare name such as ``ml-100k``,
reads the example data set RecBole ships (``recbole/dataset_example/NAME/``) from an
installed ``recbole`` package, found without importing it: in this environment, else in
the peer environment ``.venv-peers`` (``make peers`` builds it) of the current folder or of
the repository. This project does not redistribute MovieLens; that is how to get ml-100k.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from dataclasses import dataclass

from .errors import DataFileError

FORMATS = ("movielens", "amazon2014", "amazon2018", "amazon2023", "csv", "parquet", "recbole")
_COMPRESSED = r"(\.gz|\.bz2|\.zst|\.lz4)?"


@dataclass
class Located:
    """The files of one data set: interactions, the optional title file, and the kind of
    interaction file (MovieLens: "dat", "tab" or "csv"; otherwise the format)."""

    interactions: str
    titles: str | None
    kind: str


def parse_spec(spec: str) -> tuple[str, str]:
    """``"FORMAT:PATH"`` -> (format, path). The path must exist, except ``recbole:NAME``
    with a bare data set name, resolved by ``find_recbole_dataset``."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"data spec must be a string 'FORMAT:PATH', got {type(spec).__name__}")
    spec = os.fspath(spec)
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise ValueError(f"data spec must be 'FORMAT:PATH' with FORMAT in {FORMATS}, got {spec!r}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r} in {spec!r}; known formats: {', '.join(FORMATS)}")
    if not os.path.exists(path):
        if fmt == "recbole" and _RECBOLE_NAME.fullmatch(path):
            return fmt, find_recbole_dataset(path)
        raise DataFileError(path, "no such file or folder")
    if path.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        raise DataFileError(path, "archives are not read: extract it and give the folder it holds")
    return fmt, path


def _find(folder: str, pattern: str) -> list[str]:
    rx = re.compile(pattern)
    names = sorted(os.listdir(folder))
    return [f for f in names if rx.fullmatch(f) and os.path.isfile(os.path.join(folder, f))]


def _the_only(folder: str, pattern: str, fmt: str, *, missing: str, several: str) -> str:
    """The one file of ``folder`` matching ``pattern``; none or several raise, saying which."""
    found = _find(folder, pattern)
    if not found:
        raise DataFileError(folder, missing)
    if len(found) > 1:
        raise DataFileError(folder, f"{several} ({', '.join(found)}); give one as "
                                    f"{fmt}:{os.path.join(folder, found[0])}")
    return os.path.join(folder, found[0])


def _sibling(folder: str, names: list[str]) -> str | None:
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _movielens_kind(name: str) -> str:
    base = re.sub(_COMPRESSED + "$", "", name)
    return "dat" if base.endswith(".dat") else "csv" if base.endswith(".csv") else "tab"


_MOVIELENS_TITLES = {"dat": ["movies.dat"], "tab": ["u.item"], "csv": ["movies.csv"]}


def locate_movielens(path: str) -> Located:
    """MovieLens interactions and titles from a folder or a ratings file."""
    if os.path.isdir(path):
        for name in ("ratings.dat", "u.data", "ratings.csv"):
            ratings = os.path.join(path, name)
            if os.path.isfile(ratings):
                kind = _movielens_kind(name)
                return Located(ratings, _sibling(path, _MOVIELENS_TITLES[kind]), kind)
        raise DataFileError(path, "no MovieLens ratings file in this folder (looked for ratings.dat, "
                                  "u.data, ratings.csv)")
    kind = _movielens_kind(os.path.basename(path))
    return Located(path, _sibling(os.path.dirname(path) or ".", _MOVIELENS_TITLES[kind]), kind)


# Amazon review files by version: (pattern with the category as group 1, meta file stem, ext)
_AMAZON = {
    "amazon2014": (r"reviews_(.+?)(?:_5)?\.json" + _COMPRESSED, "json"),
    "amazon2018": (r"(?!meta_)(.+?)(?:_5)?\.json" + _COMPRESSED, "json"),
    "amazon2023": (r"(?!meta_)(.+?)\.jsonl" + _COMPRESSED, "jsonl"),
}


def _meta_for(folder: str, category: str, ext: str) -> str | None:
    return _sibling(folder, [f"meta_{category}.{ext}{c}" for c in ("", ".gz", ".bz2", ".zst", ".lz4")])


def locate_amazon(path: str, fmt: str) -> Located:
    """Amazon reviews and metadata from a folder or a reviews file."""
    pattern, ext = _AMAZON[fmt]
    if os.path.isdir(path):
        example = {"amazon2014": "reviews_<Cat>_5.json", "amazon2018": "<Cat>_5.json or <Cat>.json",
                   "amazon2023": "<Cat>.jsonl"}[fmt]
        reviews = _the_only(path, pattern, fmt,
                            missing=f"no {fmt} reviews file in this folder (expected {example}, "
                                    f"optionally compressed)",
                            several=f"several {fmt} review files in this folder")
        folder = path
    else:
        reviews, folder = path, os.path.dirname(path) or "."
    match = re.fullmatch(pattern, os.path.basename(reviews))
    meta = _meta_for(folder, match.group(1), ext) if match else None
    return Located(reviews, meta, fmt)


def locate_table(path: str, fmt: str) -> Located:
    """A generic CSV file (or the only one in a folder), or Parquet (a file or folder)."""
    if fmt == "parquet" or not os.path.isdir(path):
        return Located(path, None, fmt)
    found = _find(path, r".+\.(csv|tsv)" + _COMPRESSED)
    if len(found) != 1:
        raise DataFileError(path, f"expected one .csv or .tsv file in this folder, found "
                                  f"{len(found)}{': ' + ', '.join(found) if found else ''}; give the file")
    return Located(os.path.join(path, found[0]), None, fmt)


# ----------------------------------------------------------------------------- RecBole

_RECBOLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_PEERS = ".venv-peers"


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _peer_patterns(name: str = "") -> list[str]:
    """``<base>/.venv-peers/lib/python*/site-packages/recbole[/dataset_example/NAME]`` for the
    current folder and the repository root."""
    tail = ("recbole", "dataset_example", name) if name else ("recbole",)
    return [os.path.join(glob.escape(base), _PEERS, "lib", "python*", "site-packages", *tail)
            for base in dict.fromkeys([os.path.abspath(os.getcwd()), _repo_root()])]


def _env_recbole_dirs() -> list[str]:
    """The ``recbole`` package folder(s) of this environment: ``find_spec`` of a top-level
    package locates it without executing it (recbole is never imported here)."""
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        return []
    return list(spec.submodule_search_locations or []) if spec is not None else []


def _recbole_package_dirs() -> list[str]:
    """Folders that may hold an installed ``recbole`` package, best first: this environment's,
    then the ``site-packages`` of ``.venv-peers`` in the current folder and in the repository
    root."""
    return _env_recbole_dirs() + [d for pattern in _peer_patterns() for d in sorted(glob.glob(pattern))]


def find_recbole_dataset(name: str) -> str:
    """The folder ``recbole/dataset_example/NAME`` of an installed RecBole (never imported),
    looked for as ``_recbole_package_dirs`` says; a ``DataFileError`` saying where it looked
    and how to get it when there is none."""
    for package in _recbole_package_dirs():
        folder = os.path.join(package, "dataset_example", name)
        if os.path.isdir(folder):
            return folder
    looked = [os.path.join(p, "dataset_example", name) for p in _env_recbole_dirs()] \
        or ["no recbole package in this Python environment"]
    raise DataFileError(name, f"no installed recbole with data set {name!r} was found (looked in: "
                              f"{'; '.join(looked + _peer_patterns(name))}). Run `make peers` (builds "
                              f".venv-peers with RecBole, whose dataset_example holds ml-100k), or pass "
                              f"the folder of the atomic files: recbole:/path/to/{name}/")


def locate_recbole(path: str) -> Located:
    """A RecBole ``.inter`` file (or the only one in a folder) and its ``.item`` file beside it."""
    if os.path.isdir(path):
        inter = _the_only(path, r".+\.inter", "recbole",
                          missing="no RecBole .inter file in this folder (expected <name>.inter)",
                          several="several .inter files in this folder")
        folder = path
    else:
        inter, folder = path, os.path.dirname(path) or "."
    stem = os.path.basename(inter)
    stem = stem[:-len(".inter")] if stem.endswith(".inter") else os.path.splitext(stem)[0]
    return Located(inter, _sibling(folder, [stem + ".item"]), "recbole")
