"""Check a finished run's staging directory and publish it as the output, atomically.

The output directory only ever holds one whole run: a run writes everything under its own
staging directory (a hidden sibling of ``OUT``, ``.<name>.staging-<run id>``, on the same
filesystem), and only when the job has succeeded and ``verify`` passes is that directory
renamed to ``OUT`` in one step. Readers see the previous output or the new one, never a
mix, and a failed run changes nothing.

* ``OUT`` absent (or an empty directory): ``rename(staging, OUT)``.
* ``OUT`` holds a previous run: the job refuses at start (``check_out_dir``), and again here
  if another run committed meanwhile, unless ``overwrite``: then the two directories are
  swapped in one step (Linux ``renameat2(RENAME_EXCHANGE)``) and the old run is deleted.
  Where the filesystem cannot swap, the old output is renamed away first and the new one
  renamed in: ``OUT`` is then absent for the moment between two renames, never mixed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .output import REJECTED_SCHEMA
from .sink import PARTS, write_atomically

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"


class CommitError(RuntimeError):
    """The staged output does not check out: nothing was published."""


def staging_dir(out: str, run_id: str) -> str:
    out = os.path.abspath(out)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.staging-{run_id}")


def check_out_dir(out: str, overwrite: bool) -> None:
    """Before any work: ``OUT`` must be absent, an empty directory, or (with ``overwrite``)
    a directory to replace. Its parent directories are made if missing."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"output {out} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        what = "a previous run's output" if os.path.exists(os.path.join(out, MANIFEST)) else "files"
        raise FileExistsError(f"output directory {out} already holds {what}; pass --overwrite "
                              "(overwrite=True) to replace it atomically when this run succeeds, or "
                              "choose another --out")
    # The staging directory is made next to OUT (the same filesystem, for the final rename).
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)


def _parts(staging: str, part: str) -> list[str]:
    folder = os.path.join(staging, part)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):  # left by a writer that was killed
            os.remove(os.path.join(folder, name))
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))


def verify(staging: str, input_rows: int, write_returns: list[dict], scores_schema: pa.Schema) -> dict:
    """Counts of a staged run, after checking that every file is whole, that no user_id is
    in the scores twice, that the files are exactly those the write tasks reported (rows
    per task), and that scored + rejected = the input's rows. ``CommitError`` if not."""
    reported = {r["task"]: r for r in write_returns}
    problems, rows, ids, kinds = [], {}, [], []
    for part in PARTS:
        rows[part] = 0
        for path in _parts(staging, part):
            name = os.path.basename(path)
            try:
                task = int(name[len("part-"):-len(".parquet")])
                table = pq.read_table(path, columns=["user_id" if part == "scores" else "kind"])
            except (ValueError, OSError, pa.ArrowInvalid) as exc:
                problems.append(f"{part}/{name} is not a complete part file: {exc}")
                continue
            if task not in reported or reported[task][part] != table.num_rows:
                problems.append(f"{part}/{name} has {table.num_rows} rows; its write task reported "
                                f"{reported.get(task, {}).get(part, 'none')}")
            rows[part] += table.num_rows
            (ids if part == "scores" else kinds).extend(table.column(0).chunks)
    if ids:
        all_ids = pa.chunked_array(ids)
        distinct = pc.count_distinct(all_ids).as_py()
        if distinct != len(all_ids):
            problems.append(f"{len(all_ids) - distinct} scored rows repeat a user_id")
    if rows["scores"] + rows["rejected"] != input_rows:
        problems.append(f"{rows['scores']} scored + {rows['rejected']} rejected rows != the input's "
                        f"{input_rows} rows")
    if problems:
        raise CommitError(f"the staged output in {staging} does not check out, so nothing was published "
                          "(it is kept for inspection): " + "; ".join(problems))
    for part, schema in (("scores", scores_schema), ("rejected", REJECTED_SCHEMA)):
        if rows[part] == 0:  # an empty part still has a file: readers get the schema
            write_atomically(schema.empty_table(), os.path.join(staging, part, "part-empty.parquet"))
    kinds = pa.chunked_array(kinds, pa.string())
    by_kind = {d["values"]: d["counts"] for d in pc.value_counts(kinds).to_pylist()}
    return {"input": input_rows, "scored": rows["scores"], "rejected": rows["rejected"],
            "rejected_by_kind": dict(sorted(by_kind.items()))}


def write_manifest(staging: str, manifest: dict) -> None:
    with open(os.path.join(staging, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, default=str)
        f.write("\n")
    open(os.path.join(staging, SUCCESS), "w").close()


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this filesystem or kernel cannot
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def publish(staging: str, out: str, overwrite: bool) -> str:
    """Make ``staging`` the output ``out`` (module docstring); returns how: "created" or
    "replaced"."""
    if not os.path.isdir(out) or not os.listdir(out):
        try:
            os.rename(staging, out)  # replaces an empty directory; fails on a non-empty one
            return "created"
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if not overwrite:
        raise FileExistsError(f"output directory {out} was filled by another run while this one ran; this "
                              f"run's verified output is kept in {staging}")
    if _exchange(staging, out):
        shutil.rmtree(staging)  # (now the previous run)
        return "replaced"
    old = staging + ".replaced"
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old)
    return "replaced"
