"""``BatchOptions``: how a batch scoring job runs (checked once, on the driver).

It is small and picklable: every scoring actor gets a copy. The model itself is described
by the serving package's ``ServiceSpec`` (checkpoint, backbone, titles, device, dtype), so a
batch job and a server load a model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..limits import DEFAULT_MAX_HISTORY_ITEMS, check_positive_int

# Rows per scoring call = FORWARDS_PER_CALL x batch_size: a call sorts its rows by prompt
# length and runs them in forwards of batch_size, so each forward pads only to the longest
# of rows of similar length (bucketing). More forwards per call buckets better but makes
# each retried unit of work (a call) larger.
FORWARDS_PER_CALL = 8
# Rows per block = CALLS_PER_BLOCK x rows per call. A block is the unit Ray Data hands to one
# actor task, and so the unit of parallelism over actors and of a retry after a failure:
# small enough that a 20,000-user file makes tens of them, large enough that the per-task
# overhead (scheduling, moving the block) stays small next to the forwards.
CALLS_PER_BLOCK = 4
# Rows per output file (at least; the write tasks gather blocks until they have this many):
# nightly outputs of millions of users become files of this size, not thousands of small ones.
DEFAULT_ROWS_PER_FILE = 100_000

# Ray's retry settings (documented in docs/batch-scoring.md). An actor is restarted whenever
# it dies (max_restarts=-1, Ray Data's own default: its actor pool expects its actors back,
# e.g. after a lost node), but one call is attempted at most 1 + retries times: a batch that
# kills its actor every time (a native crash, out of memory) fails the job after a few
# attempts instead of looping forever (Ray Data's default for max_task_retries is -1).
DEFAULT_RETRIES = 3


@dataclass(frozen=True)
class BatchOptions:
    """``k`` items per user; ``batch_size`` users per forward; ``actors`` model actors of
    ``threads`` CPU threads each (size them so that actors x threads = the cores you give
    the job) and ``gpus_per_actor`` GPUs each; ``preference`` also writes each user's
    preference vector; ``exclude_history`` leaves the items of a user's whole history out of
    their recommendations (as the service does by default); ``retries``: attempts of a
    failed call or write beyond the first; ``overwrite`` replaces an existing output;
    ``fmt`` names the users file's format (default: by extension); ``rows_per_file``: the
    least rows of an output file (fewer only in the last ones)."""

    k: int = 100
    batch_size: int = 32
    actors: int = 1
    threads: int = 1
    gpus_per_actor: float = 0.0
    preference: bool = False
    exclude_history: bool = True
    max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS
    retries: int = DEFAULT_RETRIES
    overwrite: bool = False
    fmt: str | None = None
    rows_per_file: int = DEFAULT_ROWS_PER_FILE

    def __post_init__(self) -> None:
        for name in ("k", "batch_size", "actors", "threads", "max_history_items", "rows_per_file"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {self.retries!r}")
        if isinstance(self.gpus_per_actor, bool) or not isinstance(self.gpus_per_actor, (int, float)) \
                or self.gpus_per_actor < 0:
            raise ValueError(f"gpus_per_actor must be a number >= 0, got {self.gpus_per_actor!r}")
        for name in ("preference", "exclude_history", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")

    @property
    def rows_per_call(self) -> int:
        return FORWARDS_PER_CALL * self.batch_size

    @property
    def rows_per_block(self) -> int:
        return CALLS_PER_BLOCK * self.rows_per_call
