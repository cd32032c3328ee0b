"""Offline batch scoring on Ray Data: every user of a users file, exactly once.

    python -m l2rec_serving.batch --checkpoint CKPT --backbone DIR --titles titles.txt \\
        --users users.parquet --out scores/ --k 100 [--actors N --threads T]

    from l2rec_serving.batch import score_users
    ds = score_users("users.parquet", "scores/", k=100, actors=2)   # a Ray Dataset of the scores

The output directory holds ``scores/`` (``user_id``, ``items``, ``scores`` and, with
``preference``, ``preference``), ``rejected/`` (rows that could not be scored, with their
reason) and ``_manifest.json`` (the run's counts and settings). It is published whole when
the run succeeds, or not at all. See docs/batch-scoring.md.

Modules, one job each: ``options`` (BatchOptions), ``rows`` (reading and checking the
users file), ``scorer`` (the model actor), ``output`` (the columns), ``sink`` (the staged
writer), ``commit`` (verification and atomic publication), ``job`` (a run), ``demo``
(synthetic users files). Importing this package does not import Ray.
"""

from .options import BatchOptions


def score_users(users, out, spec=None, **kwargs):
    """``job.score_users``: score ``users`` into ``out``; returns the scores as a Ray Dataset."""
    from .job import score_users as _score_users

    return _score_users(users, out, spec, **kwargs)


def run_job(users, out, spec=None, options=None, **kwargs):
    """``job.run_job``: one run; returns a ``JobResult`` (the summary and the output path)."""
    from .job import run_job as _run_job

    return _run_job(users, out, spec, options, **kwargs)


__all__ = ["BatchOptions", "run_job", "score_users"]
