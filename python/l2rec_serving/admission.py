"""Overload and timeout limits of an HTTP server (``ServerLimits``) and admission control.

A server that accepts every request when it cannot keep up only makes every client wait
longer (latency grows without bound while the queue does). Instead each replica admits at
most ``max_queued`` ``/recommend`` requests at once (being read, waiting for a batch or in a
forward); one more gets an immediate 503 with a ``Retry-After`` header, before any work is
done for it, so a client (or its load balancer) can retry later or elsewhere. A request
that is admitted but not answered within ``request_timeout_s`` gets a 504.

Plain asyncio, no FastAPI or Ray: ``http_api`` uses it for both the Ray Serve app and the
embedded FastAPI example, and ``AsyncBatcher`` raises ``Overloaded`` for its bounded queue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .limits import FieldError, RequestError, check_positive_int

# A replica holds at most this many requests: enough for a running batch and several
# gathering behind it at the default max_batch_size (32), so a load of 32 concurrent clients
# never sees a 503, while a flood waits at most a few forwards before it is told to back off.
DEFAULT_MAX_QUEUED = 128
DEFAULT_REQUEST_TIMEOUT_S = 30.0
DEFAULT_RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class ServerLimits:
    """How much one server (one Ray replica, or one FastAPI process) takes on.

    * ``max_queued``: the most ``/recommend`` requests held at once; more get a 503.
    * ``request_timeout_s``: a request not answered in this time gets a 504.
    * ``retry_after_s``: the ``Retry-After`` a 503 carries (whole seconds, rounded up).
    """

    max_queued: int = DEFAULT_MAX_QUEUED
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    retry_after_s: float = DEFAULT_RETRY_AFTER_S

    def __post_init__(self) -> None:
        check_positive_int("max_queued", self.max_queued)
        for name, low_ok in (("request_timeout_s", False), ("retry_after_s", True)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) \
                    or v < 0 or (v == 0 and not low_ok):
                raise ValueError(f"{name} must be a finite number {'>= 0' if low_ok else '> 0'}, got {v!r}")

    @property
    def retry_after_header(self) -> str:
        # HTTP's Retry-After is whole seconds; round up so a client never retries too early.
        return str(math.ceil(self.retry_after_s))

    def to_json(self) -> dict:
        return {"max_queued": self.max_queued, "request_timeout_s": self.request_timeout_s,
                "retry_after_s": self.retry_after_s}


class Overloaded(RequestError):
    """A 503: the server holds as many requests as it may; retry after ``retry_after``."""

    def __init__(self, message: str, retry_after: str) -> None:
        super().__init__(503, [FieldError("server", message)], headers={"Retry-After": retry_after})


def request_timed_out(timeout_s: float) -> RequestError:
    """The 504 for a request not answered within ``timeout_s``."""
    return RequestError(504, [FieldError("server", f"the request was not answered within {timeout_s:g} s "
                                                   "(request_timeout_s); it was abandoned")])


class Admission:
    """Counts the requests a server holds; ``enter`` refuses one past ``limits.max_queued``.

    Single-threaded use from one event loop (an ASGI app), so a plain int is enough: there
    is no await between the check and the increment.
    """

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self.in_flight = 0

    def enter(self) -> None:
        """Admit one request, or raise ``Overloaded`` (before any work is done for it)."""
        if self.in_flight >= self.limits.max_queued:
            raise Overloaded(f"the server is at capacity ({self.in_flight} requests in progress, "
                             f"max_queued = {self.limits.max_queued}); retry after "
                             f"{self.limits.retry_after_header} s", self.limits.retry_after_header)
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1
