"""``AsyncBatcher``: dynamic request batching for any asyncio server, without Ray.

    batcher = AsyncBatcher(service.recommend_batch_isolated, max_batch_size=32, max_wait_s=0.02)
    result = await batcher.submit(request)          # from many concurrent handlers

Requests that arrive within ``max_wait_s`` of the first one (or until ``max_batch_size``
are waiting) go to one call of the batch function, which runs in a worker thread so the
event loop keeps accepting requests meanwhile; those form the next batch. One batch runs
at a time: on a shared model, a second concurrent forward only competes for the same cores.

Why: calling the model once per request from a thread pool makes every request pay a whole
forward, and the threads fight over the GIL and the cores; under concurrent load this is
several times slower than batching (README, serving section).

The batch function takes a list and returns a list of the same length whose entries are
results or ``Exception`` instances (``RecommenderService.recommend_batch_isolated``); an
exception entry is raised to that one caller only.

``max_queue`` bounds the requests waiting for a batch (not counting the batch running):
past it ``submit`` raises ``admission.Overloaded`` (a 503 with ``Retry-After`` over HTTP) at
once, instead of letting the queue, and every caller's wait, grow without bound. A caller
that gave up (cancelled, e.g. by a request timeout) before its batch started is dropped
from the batch rather than computed for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from .admission import DEFAULT_RETRY_AFTER_S, Overloaded, ServerLimits
from .limits import check_positive_int


class AsyncBatcher:
    """Gathers concurrent ``submit`` calls into batches for ``fn`` (see the module doc)."""

    def __init__(self, fn: Callable[[Sequence], Sequence], max_batch_size: int = 32,
                 max_wait_s: float = 0.02, max_queue: int | None = None,
                 retry_after_s: float = DEFAULT_RETRY_AFTER_S) -> None:
        check_positive_int("max_batch_size", max_batch_size)
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        if max_queue is not None:
            check_positive_int("max_queue", max_queue)
        self.fn, self.max_batch_size, self.max_wait_s = fn, max_batch_size, max_wait_s
        self.max_queue = max_queue
        self._retry_after = ServerLimits(retry_after_s=retry_after_s).retry_after_header
        self._queue: asyncio.Queue | None = None  # made in the running loop, on first use
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, item):
        """``fn``'s answer for ``item``, computed in a batch with concurrent submissions."""
        if self._task is None or self._task.done():
            self._queue, self._full = asyncio.Queue(), asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if self.max_queue is not None and self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"{self._queue.qsize()} requests are waiting for a batch (max_queue = "
                             f"{self.max_queue}); retry after {self._retry_after} s", self._retry_after)
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        if self._queue.qsize() + 1 >= self.max_batch_size:  # + 1: the batch's first item
            self._full.set()
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.max_wait_s > 0 and 1 + self._queue.qsize() < self.max_batch_size:
                self._full.clear()
                # Until the batch is full or the wait is over, whichever comes first.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_wait_s)
            while len(batch) < self.max_batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            batch = [(item, future) for item, future in batch if not future.done()]  # callers gone
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = await asyncio.to_thread(self.fn, items)
                if len(results) != len(items):
                    raise RuntimeError(f"the batch function returned {len(results)} results for "
                                       f"{len(items)} items")
            except Exception as exc:  # the whole call failed: every caller hears why
                results = [exc] * len(items)
            for (_, future), result in zip(batch, results):
                if future.done():  # its caller went away (e.g. the client disconnected)
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self) -> None:
        """Stop the batching task (pending callers are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            while self._queue is not None and not self._queue.empty():
                self._queue.get_nowait()[1].cancel()
            self._task = None
