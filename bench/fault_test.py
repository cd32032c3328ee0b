"""Bounded fault tests of the Ray Serve recommender, on loopback.

    python bench/fault_test.py --all                        # every scenario
    python bench/fault_test.py overload replica-kill        # some of them
    python bench/fault_test.py two-nodes --requests 300 --concurrency 8 [--out DIR]

Scenarios (each starts what it needs on 127.0.0.1 and stops it again, also on failure or
Ctrl-C; each is bounded in requests and in wall time):

overload
    One replica with a small batch (``--overload-max-batch-size``) under far more
    concurrent clients (``--overload-concurrency``) than it can serve. Every request must
    be answered: 200, or a fast 503 (the server's admission control) that carries
    Retry-After. Passes with no unanswered request, no other error or timeout, at least one
    503, Retry-After on every 503, accepted p99 under ``--max-p99-s`` and 503 p50 under
    ``--max-503-p50-ms``. Also reported: the goodput ratio, accepted throughput under
    overload over that of a first run with only ``--overload-max-queued`` clients (checked
    against ``--min-goodput-ratio`` when that is above 0). The clients ignore Retry-After
    (the worst case) and share this machine's CPUs with the server.
replica-kill
    Two replicas. Their PIDs come from ``GET /healthz`` (``replica_pid``); during a load
    run one of them gets SIGKILL and Serve replaces it. Requests that were on it may fail
    (5xx or a broken connection); at most ``--concurrency`` may (the most that are in
    flight at once), none may hang or get a wrong answer. Recovery time: from the kill until
    ``/healthz`` shows the replacement's PID (bounded by ``--recovery-timeout-s``); then a
    second run must succeed 100%.
two-nodes
    A two-node Ray cluster on this machine (``ray start --head`` and ``ray start
    --address``, each ``--block`` in its own session with its own temp dir, free ports and
    one CPU, so the two one-CPU replicas must land on different nodes: checked from the
    replica PIDs' sessions). ``python -m l2rec_serving --ray-address`` serves on it; a load
    run must succeed 100%; then the worker node is killed (its whole session, SIGKILL)
    during a second run, whose failures are counted (at most ``--concurrency``, none
    hanging); a third run must succeed 100% on the head node's replica alone. Clients use
    the head's Serve proxy, which here routes to both nodes' replicas (Serve's preference
    for its own node's replicas is turned off, as a load balancer over both proxies would
    spread them); the worker's proxy gets a port of its own. HTTP is on 127.0.0.1; Ray's
    own ports are on this machine's address, to which Ray maps 127.0.0.1 (as a local
    ``ray.init()`` does too).
batch-node-loss
    Offline batch scoring on the same two-node cluster (two CPUs per node):
    ``python -m l2rec_serving.batch --ray-address`` scores ``--batch-users`` synthetic users
    with two actors (Ray Data spreads them, one per node: checked from their PIDs' sessions)
    and small output files; once part of the output is staged and an actor runs on the
    worker node, the worker node is killed (its whole session, SIGKILL). The job must still
    publish, with every input user in the output exactly once (no missing or repeated
    user_id, nothing rejected), within ``--batch-timeout-s``. Reported, not checked: the
    scoring actors seen after the kill (Ray restarts the lost one where a CPU is free, which
    on a busy head node may be after the job has finished on the head's actor).

Clients are closed-loop (``--concurrency`` of them; a client sends its next request when
the last one is answered) and never retry, so every request ends in exactly one of: ok
(200 with k items), 503, 5xx (other 5xx), conn_error (refused or broken connection),
timeout (no answer within ``--request-timeout-s``), other (any other status or a wrong
answer) or unanswered (not finished when the phase's time bound ran out).

Prints a JSON summary per scenario, writes them to ``DIR/fault_test.json``, appends a row
per scenario to ``DIR/fault_test.csv`` and writes ``DIR/fault_test.md`` (default
bench/results/). Exits non-zero if a scenario fails its pass criteria.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _http_client  # noqa: E402
from _http_client import KINDS, Record  # noqa: E402, F401  (Record: for callers and tests)
from _timing import percentile  # noqa: E402
from load_test import client_machine, make_bodies  # noqa: E402

SCENARIOS = ("overload", "replica-kill", "two-nodes", "batch-node-loss")
CSV_FIELDS = ["date", "scenario", "passed", "requests", "ok", "503", "5xx", "conn_error", "timeout",
              "other", "unanswered", "throughput_rps", "p50_ms", "p99_ms", "p50_503_ms", "recovery_s",
              "wall_s", "machine", "load_avg_1m", "command"]
HOST = "127.0.0.1"


@dataclasses.dataclass
class Config:
    """Sizes and bounds of the scenarios (the CLI's options; the tests use small ones)."""

    requests: int = 600            # requests per measured phase
    concurrency: int = 16          # clients of the replica-kill and two-nodes phases
    overload_requests: int = 1500
    overload_concurrency: int = 128
    overload_max_batch_size: int = 4
    overload_max_queued: int = 16     # the server's --max-queued (admission bound per replica)
    max_batch_size: int = 16
    batch_wait_ms: float = 20.0
    tiny_items: int = 200
    request_timeout_s: float = 30.0   # a request with no answer by then is a timeout
    phase_timeout_s: float = 180.0    # bound on one load phase; what is left is unanswered
    recovery_timeout_s: float = 90.0  # bound on waiting for a replacement replica
    start_timeout_s: float = 180.0    # bound on a server's (or a Ray node's) start
    kill_at: float = 0.3              # the fault comes when this share of a phase is done
    # overload: accepted requests' p99 must stay below this: well under the server's request
    # timeout, with room for a shared 2-core machine where clients and server share the CPU.
    max_p99_s: float = 10.0
    max_503_p50_ms: float = 1000.0    # overload: a 503's median latency must stay below
    # overload: accepted throughput under overload over that of a run at max_queued clients
    # must reach this (0: reported, not checked)
    min_goodput_ratio: float = 0.0
    seed: int = 0
    batch_users: int = 3000           # batch-node-loss: users in the job's input
    batch_timeout_s: float = 300.0    # batch-node-loss: bound on the whole job


def run_phase(url: str, bodies: list[dict], concurrency: int, cfg: Config,
              fault: Callable[[float], None] | None = None, fault_after: int = 0,
              fresh_connections: bool = True) -> dict:
    """``_http_client.run_phase`` with this run's request and phase time bounds."""
    return _http_client.run_phase(url, bodies, concurrency, cfg.request_timeout_s, cfg.phase_timeout_s,
                                  fault, fault_after, fresh_connections)


def tally(phase: dict, n: int) -> dict:
    """Counts by kind, throughput and latencies (ms) of one phase."""
    recs = phase["records"]
    counts = {k: sum(r.kind == k for r in recs) for k in KINDS}
    ok_ms = [r.latency_s * 1e3 for r in recs if r.kind == "ok"]
    shed_ms = [r.latency_s * 1e3 for r in recs if r.kind == "503"]

    def rnd(x: float) -> float | None:
        return None if x != x else round(x, 2)  # NaN (no sample) -> null

    return {
        "requests": n, **counts, "unanswered": phase["unanswered"], "timed_out": phase["timed_out"],
        "wall_s": round(phase["wall_s"], 3),
        "throughput_rps": round(counts["ok"] / phase["wall_s"], 1) if phase["wall_s"] else 0.0,
        "answered_rps": round(len(recs) / phase["wall_s"], 1) if phase["wall_s"] else 0.0,
        "p50_ms": rnd(percentile(ok_ms, 0.50)), "p99_ms": rnd(percentile(ok_ms, 0.99)),
        "max_ms": rnd(max(ok_ms, default=float("nan"))),
        "p50_503_ms": rnd(percentile(shed_ms, 0.50)), "p99_503_ms": rnd(percentile(shed_ms, 0.99)),
        "503_with_retry_after": sum(r.retry_after for r in recs if r.kind == "503"),
        # Errors in the API's JSON shape; the rest are plain text from Ray's proxy.
        "errors_in_api_shape": sum(r.api_shape for r in recs if r.kind != "ok"),
        "load_avg_1m": phase["load_avg_1m"],
        # The distinct failures (their first 100 characters) and how often each came.
        "failures": dict(collections.Counter(r.detail[:100] for r in recs if r.kind != "ok").most_common(6)),
    }


def failed(t: dict) -> int:
    """Requests of a phase that did not get their answer (any kind but ok)."""
    return sum(t[k] for k in KINDS if k != "ok") + t["unanswered"]


def _warm_and_bodies(url: str, cfg: Config, n: int, salt: int) -> list[dict]:
    """Warm the server up (not counted) and return ``n`` request bodies for it."""
    info = httpx.get(url + "/healthz", timeout=30).json()
    warm = make_bodies(2 * cfg.concurrency, info["num_items"], info["max_history"], cfg.seed + 1000 + salt)
    run_phase(url, warm, cfg.concurrency, cfg)
    return make_bodies(n, info["num_items"], info["max_history"], cfg.seed + salt)


# ----------------------------------------------------------------------------- processes
def session_of(pid: int) -> int | None:
    """The session id of a process (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces, so after ')'.
            return int(f.read().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def kill_session(sid: int) -> int:
    """SIGKILL every process of session ``sid`` (one that this script started with
    start_new_session, so its id is that child's PID); returns how many were signalled."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and session_of(int(entry)) == sid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
                n += 1
    return n


def replica_pids(url: str, want: int, timeout_s: float, exclude: set[int] = frozenset()) -> set[int]:
    """Poll ``GET /healthz`` (answered by one replica at a time) until ``want`` distinct
    replica PIDs not in ``exclude`` were seen or ``timeout_s`` ran out."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10) as client:
        while len(seen) < want and time.monotonic() < deadline:
            try:
                r = client.get(url + "/healthz")
                if r.status_code == 200 and r.json()["replica_pid"] not in exclude:
                    seen.add(r.json()["replica_pid"])
                    continue
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.1)
    return seen


class Server:
    """``launch.ServerProcess`` that also sweeps its session away on exit: a SIGKILLed
    replica or a failed stop must leave none of this script's processes behind."""

    def __init__(self, extra_args: list[str], cfg: Config) -> None:
        from l2rec_serving.launch import ServerProcess

        self.proc = ServerProcess(extra_args, start_timeout_s=cfg.start_timeout_s)
        self.url = self.proc.url

    def __enter__(self) -> Server:
        try:
            self.proc.start()
        except BaseException:
            self._sweep()
            raise
        return self

    def _sweep(self) -> None:
        if self.proc.proc is not None:
            kill_session(self.proc.proc.pid)

    def __exit__(self, *exc) -> None:
        try:
            self.proc.__exit__(*exc)
        finally:
            self._sweep()


def _ray_cli() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "ray")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "ray.scripts.scripts"]


def _free_ports(n: int) -> list[int]:
    from l2rec_serving.launch import free_port

    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


class TwoNodeCluster:
    """A Ray head and one worker node on 127.0.0.1, one CPU each.

    Each node is ``ray start --block`` in its own session with its own temp dir (so a
    ``ray.init()`` elsewhere on this machine never finds it through /tmp/ray) and free
    ports (so it never collides with another Ray on this machine). A node is stopped by
    killing its session: ``ray stop`` would stop every Ray of this user.
    """

    def __init__(self, cfg: Config, cpus_per_node: int = 1) -> None:
        self.cfg, self.cpus = cfg, cpus_per_node
        self.tmp = tempfile.mkdtemp(prefix="l2rec_fault_ray_")
        self.gcs_port = _free_ports(1)[0]
        self.address = f"{HOST}:{self.gcs_port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, str] = {}

    def _start_node(self, name: str, head: bool, env_extra: dict) -> None:
        # Short temp paths: Ray's unix socket paths must fit in 107 bytes.
        temp_dir = os.path.join(self.tmp, name)
        ports = _free_ports(8)
        args = [*_ray_cli(), "start", "--block", "--disable-usage-stats",
                f"--num-cpus={self.cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
                f"--node-ip-address={HOST}", f"--node-manager-port={ports[0]}",
                f"--object-manager-port={ports[1]}", f"--dashboard-agent-listen-port={ports[2]}",
                f"--dashboard-agent-grpc-port={ports[3]}", f"--runtime-env-agent-port={ports[4]}",
                f"--metrics-export-port={ports[5]}", "--object-store-memory=200000000"]
        if head:
            args += ["--head", f"--port={self.gcs_port}", f"--ray-client-server-port={ports[6]}",
                     "--include-dashboard=false", f"--dashboard-port={ports[7]}"]
        else:
            args += [f"--address={self.address}"]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        # The auth mode explicitly and the same on both nodes: left unset, `ray start --head`
        # turns token auth on when ~/.ray/auth_token exists and a worker node does not.
        # Loopback only, so no token.
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", **env_extra)
        log = os.path.join(self.tmp, f"{name}.log")
        self.logs[name] = log
        with open(log, "wb") as f:
            self.nodes[name] = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while time.monotonic() < deadline:
            if self.nodes[name].poll() is not None:
                raise RuntimeError(f"ray node {name} exited ({self.nodes[name].returncode}):\n"
                                   f"{self.log_tail(name)}")
            if "Ray runtime started" in self.log_tail(name, 1 << 20):
                return
            time.sleep(0.3)
        raise TimeoutError(f"ray node {name} did not start in {self.cfg.start_timeout_s:.0f} s:\n"
                           f"{self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            with open(self.logs[name], "rb") as f:
                return f.read().decode(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self, worker_env: dict | None = None, env: dict | None = None) -> TwoNodeCluster:
        """Both nodes; ``env`` goes to both (and so to their Ray workers), ``worker_env``
        to the worker node only."""
        self._start_node("head", head=True, env_extra={**(env or {})})
        self._start_node("worker", head=False, env_extra={**(env or {}), **(worker_env or {})})
        return self

    def node_of(self, pid: int) -> str | None:
        """Which node (head, worker) a process belongs to, from its session."""
        sid = session_of(pid)
        return next((name for name, p in self.nodes.items() if p.pid == sid), None)

    def kill_node(self, name: str) -> int:
        return kill_session(self.nodes[name].pid)

    def stop(self) -> None:
        for name in ("worker", "head"):
            if name in self.nodes:
                self.kill_node(name)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.nodes[name].wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> TwoNodeCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _server_args(cfg: Config, max_batch_size: int, replicas: int) -> list[str]:
    return ["--max-batch-size", str(max_batch_size), "--batch-wait-ms", str(cfg.batch_wait_ms),
            "--replicas", str(replicas), "--tiny-items", str(cfg.tiny_items)]


def _result(name: str, checks: dict[str, bool], bounds: dict, t0: float, **fields) -> dict:
    return {"scenario": name, "passed": all(checks.values()), "checks": checks, "bounds": bounds,
            "scenario_wall_s": round(time.perf_counter() - t0, 1), **fields}


# ----------------------------------------------------------------------------- scenarios
def scenario_overload(cfg: Config) -> dict:
    """One small replica, far more clients than it can take: 200s and fast 503s only."""
    t0 = time.perf_counter()
    mbs = cfg.overload_max_batch_size
    with Server([*_server_args(cfg, mbs, 1), "--max-queued", str(cfg.overload_max_queued)], cfg) as server:
        bodies = _warm_and_bodies(server.url, cfg, cfg.overload_requests, salt=1)
        # The baseline: as many clients as the replica admits, so (nearly) none is refused.
        n_base = max(cfg.overload_requests // 4, 2 * cfg.overload_max_queued)
        base = run_phase(server.url, bodies[:n_base], cfg.overload_max_queued, cfg, fresh_connections=False)
        phase = run_phase(server.url, bodies, cfg.overload_concurrency, cfg, fresh_connections=False)
        healthy = httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    t, tb = tally(phase, len(bodies)), tally(base, n_base)
    goodput = round(t["throughput_rps"] / tb["throughput_rps"], 2) if tb["throughput_rps"] else None
    checks = {
        "no_unanswered": t["unanswered"] == 0,
        "no_timeouts": t["timeout"] == 0,
        "no_other_errors": t["5xx"] == t["conn_error"] == t["other"] == 0,
        "sheds_load_with_503": t["503"] > 0,
        "every_503_has_retry_after": t["503_with_retry_after"] == t["503"],
        # Ray's limits sit above the replica's admission (ray_app.ray_max_ongoing), so nearly
        # every 503 is the server's own, in the API's error shape, not Ray's plain text.
        "503s_in_api_shape": t["errors_in_api_shape"] >= 0.9 * t["503"],
        "accepted_p99_bounded": t["p99_ms"] is not None and t["p99_ms"] < cfg.max_p99_s * 1e3,
        "503_p50_fast": t["503"] == 0 or t["p50_503_ms"] < cfg.max_503_p50_ms,
        "healthy_after": healthy,
        "goodput_ratio_reached": goodput is not None and goodput >= cfg.min_goodput_ratio,
    }
    bounds = {"max_p99_ms": cfg.max_p99_s * 1e3, "max_503_p50_ms": cfg.max_503_p50_ms,
              "min_goodput_ratio": cfg.min_goodput_ratio}
    return _result("overload", checks, bounds, t0,
                   concurrency=cfg.overload_concurrency, max_batch_size=mbs,
                   max_queued=cfg.overload_max_queued, replicas=1,
                   goodput_ratio=goodput, recovery_s=None, phases={"baseline": tb, "overload": t},
                   summary=t)


def scenario_replica_kill(cfg: Config) -> dict:
    """Two replicas, SIGKILL one during a load run; Serve replaces it."""
    t0 = time.perf_counter()
    with Server(_server_args(cfg, cfg.max_batch_size, 2), cfg) as server:
        pids = replica_pids(server.url, 2, 30)
        if len(pids) < 2:
            raise RuntimeError(f"saw {len(pids)} replica PID(s) from /healthz, not 2: {pids}")
        bodies = _warm_and_bodies(server.url, cfg, 2 * cfg.requests, salt=2)
        victim = min(pids)
        # Only a process of this server's own session: never someone else's.
        if session_of(victim) != server.proc.proc.pid:
            raise RuntimeError(f"replica PID {victim} is not in the server's session")
        kill_mono: list[float] = []

        def kill(_t: float) -> None:
            kill_mono.append(time.monotonic())
            os.kill(victim, signal.SIGKILL)

        during = run_phase(server.url, bodies[:cfg.requests], cfg.concurrency, cfg, kill,
                           int(cfg.kill_at * cfg.requests))
        # Recovery: the replacement answers /healthz (bounded; the run above took some of it).
        new = set()
        if kill_mono:
            left = cfg.recovery_timeout_s - (time.monotonic() - kill_mono[0])
            new = replica_pids(server.url, 1, max(left, 1.0), exclude=pids)
        recovery_s = round(time.monotonic() - kill_mono[0], 2) if new and kill_mono else None
        after = run_phase(server.url, bodies[cfg.requests:], cfg.concurrency, cfg)
        final_pids = replica_pids(server.url, 2, 15)
    td, ta = tally(during, cfg.requests), tally(after, cfg.requests)
    checks = {
        "killed": bool(kill_mono),
        "during_no_unanswered_or_timeout": td["unanswered"] == 0 and td["timeout"] == 0,
        "during_no_wrong_answers": td["other"] == 0 and td["503"] == 0,
        "during_failures_at_most_in_flight": failed(td) <= cfg.concurrency,
        "replaced_within_bound": recovery_s is not None,
        "after_all_ok": ta["ok"] == cfg.requests,
    }
    return _result("replica-kill", checks, {"max_failures_during": cfg.concurrency,
                                            "recovery_timeout_s": cfg.recovery_timeout_s}, t0,
                   concurrency=cfg.concurrency, replicas=2, replica_pids=sorted(pids),
                   killed_pid=victim, replacement_pids=sorted(new), pids_after=sorted(final_pids),
                   kill_at_s=round(during["fault_t"], 2) if during["fault_t"] is not None else None,
                   recovery_s=recovery_s, phases={"during_kill": td, "after_recovery": ta},
                   summary=_combined(td, ta))


def scenario_two_nodes(cfg: Config) -> dict:
    """Two one-CPU Ray nodes, one replica on each; the worker node dies during a run."""
    t0 = time.perf_counter()
    # The worker node's Serve proxy gets its own port: on one machine both proxies would
    # otherwise share the head's port (SO_REUSEPORT) and the kernel would hand the test's
    # connections to either; on real hosts each proxy has its own address.
    worker_proxy_port = _free_ports(1)[0]
    with TwoNodeCluster(cfg) as cluster:
        # A Serve proxy routes to replicas on its own node while they have room; off, so
        # the head's proxy (the one the clients use) spreads requests over both replicas,
        # as a load balancer over both nodes' proxies would.
        cluster.start(worker_env={"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_proxy_port)},
                      env={"RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"})
        with Server([*_server_args(cfg, cfg.max_batch_size, 2), "--ray-address", cluster.address],
                    cfg) as server:
            pids = replica_pids(server.url, 2, 30)
            placement = {pid: cluster.node_of(pid) for pid in sorted(pids)}
            bodies = _warm_and_bodies(server.url, cfg, 3 * cfg.requests, salt=3)
            n = cfg.requests
            before = run_phase(server.url, bodies[:n], cfg.concurrency, cfg)
            kill_t: list[float] = []

            def kill(t: float) -> None:
                kill_t.append(t)
                cluster.kill_node("worker")

            during = run_phase(server.url, bodies[n:2 * n], cfg.concurrency, cfg, kill, int(cfg.kill_at * n))
            after = run_phase(server.url, bodies[2 * n:], cfg.concurrency, cfg)
            pids_after = replica_pids(server.url, 2, 10)
    tb, td, ta = tally(before, n), tally(during, n), tally(after, n)
    # Client-side recovery: from the kill to the end of the last failed request of that run.
    fail_ends = [r.t_end for r in during["records"] if r.kind != "ok"]
    recovery_s = round(max(fail_ends) - kill_t[0], 2) if kill_t and fail_ends else (0.0 if kill_t else None)
    checks = {
        "replicas_on_both_nodes": len(pids) == 2 and set(placement.values()) == {"head", "worker"},
        "before_all_ok": tb["ok"] == n,
        "worker_killed": bool(kill_t),
        "during_no_unanswered_or_timeout": td["unanswered"] == 0 and td["timeout"] == 0,
        "during_no_wrong_answers": td["other"] == 0 and td["503"] == 0,
        "during_failures_at_most_in_flight": failed(td) <= cfg.concurrency,
        "after_all_ok": ta["ok"] == n,
        "served_by_head_replica_after": bool(pids_after) and all(placement.get(p) == "head"
                                                                 for p in pids_after),
    }
    return _result("two-nodes", checks, {"max_failures_during": cfg.concurrency}, t0,
                   concurrency=cfg.concurrency, replicas=2, cluster=cluster.address,
                   replica_nodes={str(p): node for p, node in placement.items()},
                   pids_after=sorted(pids_after),
                   kill_at_s=round(kill_t[0], 2) if kill_t else None, recovery_s=recovery_s,
                   phases={"before": tb, "during_kill": td, "after": ta}, summary=_combined(tb, td, ta))


def _scorer_pids(cluster: TwoNodeCluster) -> dict[int, str]:
    """The batch job's scoring actors (``ray::MapWorker(MapBatches(UserScorer))``) on this
    cluster's nodes: PID -> node."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"UserScorer" not in f.read():
                    continue
        except OSError:
            continue
        node = cluster.node_of(int(entry))
        if node is not None:
            found[int(entry)] = node
    return found


def scenario_batch_node_loss(cfg: Config) -> dict:
    """Batch scoring with one actor per node; the worker node dies mid-run; every user once."""
    import pyarrow.parquet as pq
    from l2rec_serving.batch.demo import write_users

    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="l2rec_fault_batch_")
    users, out = os.path.join(tmp, "users.parquet"), os.path.join(tmp, "out")
    n = write_users(users, cfg.batch_users, num_items=cfg.tiny_items, seed=cfg.seed)
    log_path = os.path.join(tmp, "job.log")
    placement, after, kill_t, running_at_kill, rc = {}, {}, None, False, None
    try:
        with TwoNodeCluster(cfg, cpus_per_node=2) as cluster, open(log_path, "wb") as log:
            cluster.start()
            env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
            env["RAY_AUTH_MODE"] = "disabled"  # as the cluster's nodes
            # Small blocks (128 users) and files (128 rows): the job is many retryable units,
            # and its staged parts show how far it got.
            job = subprocess.Popen(
                [sys.executable, "-m", "l2rec_serving.batch", "--ray-address", cluster.address,
                 "--users", users, "--out", out, "--k", "10", "--actors", "2", "--batch-size", "4",
                 "--rows-per-file", "128", "--tiny-items", str(cfg.tiny_items)],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            started = time.monotonic()
            try:
                deadline = started + cfg.batch_timeout_s
                while job.poll() is None and time.monotonic() < deadline:
                    placement.update(_scorer_pids(cluster))
                    staged = any(f.startswith("part-") for r, _, fs in os.walk(tmp) if ".staging-" in r
                                 for f in fs)
                    if staged and "worker" in _scorer_pids(cluster).values():
                        running_at_kill = job.poll() is None
                        kill_t = time.monotonic() - started
                        cluster.kill_node("worker")
                        break
                    time.sleep(0.1)
                while job.poll() is None and time.monotonic() < deadline:
                    after.update({p: node for p, node in _scorer_pids(cluster).items() if p not in placement})
                    time.sleep(0.2)
                rc = job.poll()
            finally:
                if job.poll() is None:
                    kill_session(job.pid)
                job.wait(10)
        wall_s = time.perf_counter() - t0
        ids, counts = [], {}
        if rc == 0:
            ids = pq.read_table(os.path.join(out, "scores"), columns=["user_id"])["user_id"].to_pylist()
            with open(os.path.join(out, "_manifest.json")) as f:
                counts = json.load(f)["counts"]
        with open(log_path, "rb") as f:
            log_tail = f.read().decode(errors="replace")[-3000:]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    expected = {f"u{i}" for i in range(cfg.batch_users)}
    missing, repeated = len(expected - set(ids)), len(ids) - len(set(ids))
    checks = {
        "actors_on_both_nodes": set(placement.values()) == {"head", "worker"},
        "worker_killed_mid_run": kill_t is not None and running_at_kill,
        "job_published": rc == 0,
        "no_user_missing": rc == 0 and missing == 0,
        "no_user_twice": rc == 0 and repeated == 0,
        "counts_match": (counts.get("input"), counts.get("scored"), counts.get("rejected")) == (n, n, 0),
    }
    summary = {"requests": n, "ok": len(set(ids)), "other": repeated, "unanswered": missing,
               "wall_s": round(wall_s, 3), "throughput_rps": round(len(ids) / wall_s, 1) if wall_s else 0.0,
               "load_avg_1m": f"{os.getloadavg()[0]:.2f}"}
    result = _result("batch-node-loss", checks, {"batch_timeout_s": cfg.batch_timeout_s}, t0,
                     users=n, actors=2, job_rc=rc, kill_at_s=round(kill_t, 2) if kill_t is not None else None,
                     actor_nodes={str(p): node for p, node in placement.items()},
                     actors_after_kill={str(p): node for p, node in after.items()},
                     missing=missing, repeated=repeated, manifest_counts=counts, recovery_s=None,
                     summary=summary)
    if not result["passed"]:
        result["job_log_tail"] = log_tail
    return result


def _combined(*phases: dict) -> dict:
    """One row for a scenario of several phases: counts summed, latencies of the worst phase."""
    out = {k: sum(p[k] for p in phases) for k in ("requests", *KINDS, "unanswered")}
    wall = sum(p["wall_s"] for p in phases)
    out["wall_s"] = round(wall, 3)
    out["throughput_rps"] = round(out["ok"] / wall, 1) if wall else 0.0
    for key in ("p50_ms", "p99_ms", "p50_503_ms"):
        vals = [p[key] for p in phases if p[key] is not None]
        out[key] = max(vals) if vals else None
    out["load_avg_1m"] = phases[-1]["load_avg_1m"]
    return out


RUNNERS = {"overload": scenario_overload, "replica-kill": scenario_replica_kill,
           "two-nodes": scenario_two_nodes, "batch-node-loss": scenario_batch_node_loss}


def run_scenario(name: str, cfg: Config) -> dict:
    """Run one scenario; an exception fails it (recorded) instead of ending the run."""
    t0 = time.perf_counter()
    try:
        return RUNNERS[name](cfg)
    except Exception as exc:  # the next scenario still runs; this one is marked failed
        return {"scenario": name, "passed": False, "error": f"{type(exc).__name__}: {exc}"[:4000],
                "scenario_wall_s": round(time.perf_counter() - t0, 1), "recovery_s": None,
                "summary": {}}


# ----------------------------------------------------------------------------- results
def write_results(results: list[dict], out_dir: str, command: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    machine = client_machine()
    doc = {"date": date, "machine": machine, "command": command,
           "passed": all(r["passed"] for r in results), "scenarios": results}
    with open(os.path.join(out_dir, "fault_test.json"), "w") as f:
        json.dump(doc, f, indent=2)
    path = os.path.join(out_dir, "fault_test.csv")
    new = not os.path.exists(path)
    rows = []
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in results:
            row = {**r.get("summary", {}), "date": date, "scenario": r["scenario"], "passed": r["passed"],
                   "recovery_s": r.get("recovery_s"), "machine": machine, "command": command}
            w.writerow(row)
            rows.append(row)
    cols = ["scenario", "passed", "requests", "ok", "503", "5xx", "conn_error", "timeout", "other",
            "unanswered", "throughput_rps", "p50_ms", "p99_ms", "p50_503_ms", "recovery_s"]
    lines = [f"# Fault tests ({date})", "", f"Machine: {machine}. Command: `{command}`.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |"
              for row in rows]
    lines += ["", "Counts are requests over all of a scenario's measured phases; throughput_rps is "
              "200s per second; p50/p99 are of accepted (200) requests, in ms, the worst phase's; "
              "recovery_s: replica-kill, kill to replacement seen on /healthz; two-nodes, kill to "
              "the end of the last failed request. Per phase, the checks and bounds: fault_test.json."]
    with open(os.path.join(out_dir, "fault_test.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM end the run as Ctrl-C does, so every ``finally`` stops what it
    started. SIGINT explicitly too: a shell starts background jobs with SIGINT ignored."""
    def handler(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)}")
    ap.add_argument("--all", action="store_true", help="every scenario")
    for field in dataclasses.fields(Config):
        ap.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    names = list(SCENARIOS) if args.all else list(dict.fromkeys(args.scenarios))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    if not names:
        ap.error(f"name scenarios ({', '.join(SCENARIOS)}) or pass --all")
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    _interrupt_on_signals()
    argv_used = sys.argv if argv is None else ["bench/fault_test.py", *argv]
    command = "python " + " ".join(shlex.quote(a) for a in argv_used)
    results = []
    for name in names:
        print(f"fault_test: {name} ...", file=sys.stderr, flush=True)
        results.append(run_scenario(name, cfg))
        r = results[-1]
        print(f"fault_test: {name}: {'passed' if r['passed'] else 'FAILED'} "
              f"({r['scenario_wall_s']} s)", file=sys.stderr, flush=True)
    print(json.dumps(results, indent=2))
    write_results(results, args.out, command)
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
