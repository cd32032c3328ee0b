"""``run_job``: one batch scoring run, from a users file to a published output directory.

1. Checks, before any work: the arguments, the users file's format and columns, the output
   directory (``commit.check_out_dir``), k against the catalogue.
2. Ray: the running one, the cluster at ``ray_address``, or a new local instance with
   actors x threads + 1 logical CPUs (the one more runs the read and write tasks).
3. First pass, for duplicate user ids (they need a view of the whole input): Ray Data reads
   only the ``user_id`` column (``rows.user_keys``) and streams it to the driver, which
   counts the ids with Arrow (``value_counts``). The driver holds every id once (about 8
   bytes per int id, plus the string's length for string ids) and keeps those seen more
   than once; it also counts the input's rows, which the commit checks against.
4. Scoring: ``read`` -> ``repartition`` into blocks of ``rows_per_block`` users (the unit
   an actor takes and a failure retries) -> ``map_batches(UserScorer)`` on a pool of
   ``actors`` actors (each ``threads`` CPUs, ``gpus_per_actor`` GPUs; restarted when they
   die, a call retried at most ``retries`` times) -> ``write_datasink(StagingSink)`` into
   the run's staging directory (write tasks also retried at most ``retries`` times).
5. ``commit.verify`` then ``commit.publish``: the output appears whole, or not at all.

Progress is Ray Data's own; the summary (users, users/s, scored, rejected by kind) is
printed at the end and kept in ``OUT/_manifest.json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..loading import ServiceSpec
from . import commit
from .options import BatchOptions
from .output import scores_schema
from .rows import check_schema, detect_format, read_users, user_keys
from .scorer import UserScorer
from .sink import StagingSink


@dataclass
class JobResult:
    """What a run did: ``summary`` (also in ``OUT/_manifest.json``) and where it wrote."""

    out: str
    summary: dict

    def line(self) -> str:
        s = self.summary
        c = s["counts"]
        kinds = ", ".join(f"{n} {k}" for k, n in c["rejected_by_kind"].items())
        return (f"l2rec_serving.batch: {c['input']} users in {s['wall_s']:.1f} s "
                f"({s['users_per_s']:.0f} users/s): {c['scored']} scored, {c['rejected']} rejected"
                f"{f' ({kinds})' if kinds else ''}; output {self.out} ({s['published']})")


def catalogue_size(spec: ServiceSpec) -> int:
    """The model's number of items, read without loading the model."""
    if spec.checkpoint is None:
        return spec.tiny_num_items
    from l2rec_kernels.models.base import CONFIG_NAME

    path = os.path.join(spec.checkpoint, CONFIG_NAME)
    try:
        with open(path) as f:
            return int(json.load(f)["config"]["num_items"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"checkpoint {spec.checkpoint}: cannot read num_items from {path} ({exc}); "
                         "is it an L2Rec checkpoint?") from None


def init_ray(ray_address: str | None, options: BatchOptions) -> bool:
    """Start or join Ray unless this process already has it; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if ray_address:
        ray.init(address=ray_address)
    else:
        # A new local instance (never a `ray start` cluster of this machine, which a bare
        # ray.init() would join): logical CPUs for the actors, one more for reads and writes.
        ray.init(address="local", num_cpus=options.actors * options.threads + 1, include_dashboard=False)
    return True


def _check_cluster(options: BatchOptions) -> None:
    import ray

    res = ray.cluster_resources()
    need = {"CPU": options.actors * options.threads, "GPU": options.actors * options.gpus_per_actor}
    for name, amount in need.items():
        if amount and res.get(name, 0) < amount:
            raise ValueError(f"the Ray cluster has {res.get(name, 0):g} {name}s but {options.actors} "
                             f"actors x {amount / options.actors:g} {name}s need {amount:g}: lower "
                             "--actors, --threads or --gpus-per-actor")


def first_pass(raw, fmt: str) -> tuple[int, dict[str, int], bool]:
    """(input rows, {user key: count} of the ids seen more than once, whether every valid id
    is an int) of the whole input."""
    ds = raw.select_columns(["user_id"]) if fmt != "json" else raw
    keys = ds.map_batches(user_keys, fn_kwargs={"fmt": fmt}, batch_format="pyarrow", batch_size=None)
    batches = list(keys.iter_batches(batch_format="pyarrow", batch_size=None))
    if not batches:
        return 0, {}, True
    table = pa.concat_tables(batches)
    counts = pc.value_counts(table.column("key").drop_null())
    repeated = pc.greater(counts.field("counts"), 1)
    dups = dict(zip(pc.filter(counts.field("values"), repeated).to_pylist(),
                    pc.filter(counts.field("counts"), repeated).to_pylist()))
    valid = pc.is_valid(table.column("key"))
    all_int = pc.all(pc.or_(pc.invert(valid), table.column("is_int"))).as_py() is not False
    return table.num_rows, dups, all_int


def output_uid_type(uid_type: pa.DataType | None, all_int: bool) -> pa.DataType:
    """The output's ``user_id`` type: the input column's (ints stay ints, strings strings);
    for JSON lines int64 when every id is an int, else string (ints written as text)."""
    if uid_type is not None and not pa.types.is_null(uid_type):
        return pa.string() if pa.types.is_large_string(uid_type) else uid_type
    return pa.int64() if uid_type is None and all_int else pa.string()


def score_into(staging: str, raw, spec: ServiceSpec, options: BatchOptions, fmt: str,
               duplicates: dict[str, int], uid_type: pa.DataType, input_rows: int) -> dict:
    """Score ``raw`` into ``staging`` and verify it (steps 4 and 5 of the module docstring);
    returns ``commit.verify``'s counts."""
    import ray.data

    sink = StagingSink(staging, options.rows_per_file)
    ctx = ray.data.DataContext.get_current()
    # (Ray Data's default, made sure of) a block that fails fails the job, never skipped.
    errored_blocks, ctx.max_errored_blocks = ctx.max_errored_blocks, 0
    try:
        # Blocks of rows_per_block rows (a big file is split, small ones combined, streaming):
        # the units that the actors share and that a failure retries.
        blocks = raw.repartition(target_num_rows_per_block=options.rows_per_block)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates map_batches' **ray_remote_args (for 2.64) but has no named
            # parameter yet for the actors' max_restarts/max_task_retries, which the job needs.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            scored = blocks.map_batches(
                UserScorer, fn_constructor_kwargs={"spec": spec, "options": options, "fmt": fmt,
                                                   "duplicates": duplicates, "uid_type": uid_type},
                batch_size=options.rows_per_call, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=options.actors), num_cpus=options.threads,
                num_gpus=options.gpus_per_actor or None, max_restarts=-1,
                max_task_retries=options.retries)
        scored.write_datasink(sink, ray_remote_args={"max_retries": options.retries})
    finally:
        ctx.max_errored_blocks = errored_blocks
    return commit.verify(staging, input_rows, sink.write_returns, scores_schema(uid_type, options.preference))


def run_job(users: str, out: str, spec: ServiceSpec | None = None, options: BatchOptions | None = None, *,
            ray_address: str | None = None, command: str | None = None, quiet: bool = False) -> JobResult:
    """Score every user of ``users`` into ``out`` (module docstring); returns what it did.
    Leaves Ray running (the caller may read the output with it); ``command`` is recorded."""
    import ray
    import ray.data

    spec = spec if spec is not None else ServiceSpec()
    options = options if options is not None else BatchOptions()
    if not isinstance(spec, ServiceSpec) or not isinstance(options, BatchOptions):
        raise TypeError("spec must be a ServiceSpec and options a BatchOptions")
    users, out = str(users), os.path.abspath(str(out))
    fmt = detect_format(users, options.fmt)
    commit.check_out_dir(out, options.overwrite)
    num_items = catalogue_size(spec)
    if options.k > num_items:
        raise ValueError(f"k = {options.k} is more than the catalogue's {num_items} items")

    started = dt.datetime.now(dt.timezone.utc)
    t_init = time.perf_counter()
    init_ray(ray_address, options)
    _check_cluster(options)
    ray_init_s = time.perf_counter() - t_init

    t0 = time.perf_counter()
    raw = read_users(users, fmt)
    uid_type = check_schema(raw.schema() if fmt != "json" else None, fmt, users)
    input_rows, duplicates, all_int = first_pass(raw, fmt)
    uid_out = output_uid_type(uid_type, all_int)
    first_pass_s = time.perf_counter() - t0

    run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    staging = commit.staging_dir(out, run_id)
    for part in ("scores", "rejected"):
        os.makedirs(os.path.join(staging, part))
    try:
        counts = score_into(staging, raw, spec, options, fmt, duplicates, uid_out, input_rows)
    except commit.CommitError:
        raise  # the staged files stay for inspection (the message says where)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wall_s = time.perf_counter() - t0
    summary = {
        "format": "l2rec-batch-scores/1", "run_id": run_id, "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "users": os.path.abspath(users), "users_format": fmt,
        "model": {k: getattr(spec, k) for k in ("checkpoint", "backbone", "titles", "prompt_template",
                                                "device", "dtype", "backend", "tiny_num_items", "seed",
                                                "model_shape")},
        "options": dataclasses.asdict(options), "counts": counts,
        "columns": {"scores": scores_schema(uid_out, options.preference).names,
                    "rejected": ["user_id", "kind", "reason", "row"]},
        # wall_s: from reading the input to the verified output (Ray already up), of which
        # first_pass_s counted the user ids; ray_init_s: starting or joining Ray, before.
        "wall_s": round(wall_s, 3), "first_pass_s": round(first_pass_s, 3),
        "ray_init_s": round(ray_init_s, 3),
        "users_per_s": round(input_rows / wall_s, 1) if wall_s else 0.0,
        "ray": {"version": ray.__version__, "address": ray_address or "local"},
    }
    commit.write_manifest(staging, summary)
    summary["published"] = commit.publish(staging, out, options.overwrite)
    result = JobResult(out, summary)
    if not quiet:
        print(result.line(), file=sys.stdout, flush=True)
    return result


def score_users(users: str, out: str, spec: ServiceSpec | None = None, *, ray_address: str | None = None,
                quiet: bool = False, **options):
    """``run_job`` with ``BatchOptions(**options)``; returns the published scores as a Ray
    Dataset (``OUT/scores`` read with ``ray.data.read_parquet``), Ray left running to read it.

        ds = score_users("users.parquet", "scores_out", k=100, actors=2)
    """
    result = run_job(users, out, spec, BatchOptions(**options), ray_address=ray_address, quiet=quiet)
    return read_users(os.path.join(result.out, "scores"), "parquet")
