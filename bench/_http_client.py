"""The closed-loop HTTP clients of the serving benchmarks (bench/load_test.py and
bench/fault_test.py): ``concurrency`` clients share a list of request bodies, each sending
its next request when the last one is answered, never retrying. Every request ends as one
``Record`` of a kind in ``KINDS``: ok (200 with k items), 503, 5xx (other 5xx),
conn_error (refused or broken connection), timeout (no answer within the request
timeout) or other (any other status or a wrong answer); those not finished when the
phase's time bound runs out are counted as unanswered.

aiohttp, not httpx: on a 2-core machine the clients share the CPU with the server, and
aiohttp needs a fraction of httpx's CPU per request (so the numbers measure the server).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable

import aiohttp

KINDS = ("ok", "503", "5xx", "conn_error", "timeout", "other")


@dataclasses.dataclass
class Record:
    kind: str          # one of KINDS
    status: int | None
    latency_s: float
    t_end: float       # seconds since the phase started
    retry_after: bool  # a Retry-After header came with the answer
    detail: str = ""
    api_shape: bool = False  # an error answer in the API's {"error", "errors"} JSON shape


async def _one(session: aiohttp.ClientSession, body: dict, t_phase: float) -> Record:
    t0 = time.perf_counter()
    status, retry_after, detail, api_shape = None, False, "", False
    try:
        async with session.post("/recommend", json=body) as r:
            status, retry_after = r.status, "Retry-After" in r.headers
            text = await r.text()
        if status == 200:
            try:
                ok = len(json.loads(text)["items"]) == body["k"]
            except (ValueError, KeyError, TypeError):
                ok = False
            kind = "ok" if ok else "other"
        else:
            kind = "503" if status == 503 else "5xx" if status >= 500 else "other"
        if kind != "ok":
            detail = f"HTTP {status}: {text[:160]}"
            api_shape = _api_error_shape(text)
    # aiohttp's ServerTimeoutError is both a timeout and a connection error: a timeout here.
    except asyncio.TimeoutError as exc:
        kind, detail = "timeout", f"{type(exc).__name__}: {exc}"
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        kind, detail = "conn_error", f"{type(exc).__name__}: {exc}"
    except aiohttp.ClientError as exc:
        kind, detail = "other", f"{type(exc).__name__}: {exc}"
    t1 = time.perf_counter()
    return Record(kind, status, t1 - t0, t1 - t_phase, retry_after, detail, api_shape)


def _api_error_shape(text: str) -> bool:
    try:
        payload = json.loads(text)
    except ValueError:
        return False
    return isinstance(payload, dict) and isinstance(payload.get("error"), str) \
        and isinstance(payload.get("errors"), list)


async def _phase(url: str, bodies: list[dict], concurrency: int, request_timeout_s: float,
                 records: list[Record], fault: Callable[[], Awaitable[None]] | None,
                 fresh_connections: bool) -> None:
    queue = iter(bodies)  # shared: next() hands out each body exactly once
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    # fresh_connections: a new connection per request, so a connection that a failure broke
    # is never reused and each failure is one request's (the fault scenarios); otherwise
    # keep-alive, as real clients under load do (the overload scenario).
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=fresh_connections)
    t_phase = time.perf_counter()
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def client() -> None:
            for body in queue:
                records.append(await _one(session, body, t_phase))

        tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
        if fault is not None:
            tasks.append(asyncio.ensure_future(fault()))
        try:
            await asyncio.gather(*tasks[:concurrency])
            if fault is not None:  # a fault still waiting for its moment never comes
                await tasks[-1]
        finally:  # on the time bound (or Ctrl-C): nothing is left running
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def run_phase(url: str, bodies: list[dict], concurrency: int, request_timeout_s: float,
              phase_timeout_s: float, fault: Callable[[float], None] | None = None,
              fault_after: int = 0, fresh_connections: bool = True) -> dict:
    """Send every body with ``concurrency`` closed-loop clients, bounded by ``phase_timeout_s``.

    ``fault(t)`` (blocking; run in a thread so the clients keep going) is called once
    ``fault_after`` requests have finished, with t = seconds since the phase started.
    Returns the records, the unanswered count, the wall time and the fault's time.
    """
    records: list[Record] = []
    fault_t: list[float] = []

    async def inject() -> None:
        t_phase = time.perf_counter()
        while len(records) < min(fault_after, len(bodies) - 1):
            await asyncio.sleep(0.005)
        t = time.perf_counter() - t_phase
        fault_t.append(t)
        await asyncio.to_thread(fault, t)

    async def bounded() -> bool:
        try:
            await asyncio.wait_for(_phase(url, bodies, concurrency, request_timeout_s, records,
                                          inject if fault else None, fresh_connections),
                                   phase_timeout_s)
            return False
        except asyncio.TimeoutError:
            return True

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    timed_out = asyncio.run(bounded())
    wall = time.perf_counter() - t0
    return {"records": records, "unanswered": len(bodies) - len(records), "wall_s": wall,
            "timed_out": timed_out, "fault_t": fault_t[0] if fault_t else None,
            "load_avg_1m": f"{load0:.2f} -> {os.getloadavg()[0]:.2f}"}
