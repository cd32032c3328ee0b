"""The fault scenarios of ``bench/fault_test.py`` at small counts: a SIGKILLed replica (few
failures, replaced, then all succeed) and a two-node Ray cluster that loses its worker node
(the head's replica keeps serving). Each asserts the scenario's pass criteria, not only that
it ran. Overload is tested once on Ray (tests/test_serving.py) and once in-process
(tests/test_serving_api.py); ``make fault-test`` still runs its overload scenario.

Needs the ``serve`` extra (ray[serve], aiohttp, httpx); skips with the reason otherwise.
Every scenario starts its own server (and cluster) on loopback and stops it again.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from bench_modules import bench_module


def _missing(module: str) -> bool:
    try:  # (find_spec of a submodule imports its package, which may fail)
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError, AttributeError):
        return True


MISSING = [m for m in ("ray", "ray.serve", "aiohttp", "httpx") if _missing(m)]
pytestmark = pytest.mark.skipif(bool(MISSING),
                                reason=f"the serve extra is not installed ({', '.join(MISSING)})")


@pytest.fixture(scope="module")
def ft():
    return bench_module("fault_test")


@pytest.fixture(scope="module")
def cfg(ft):
    # Small counts; bounds tight enough that a hang fails the test instead of stalling it.
    return ft.Config(requests=150, concurrency=8, overload_requests=300, overload_concurrency=64,
                     overload_max_batch_size=4, overload_max_queued=8, max_batch_size=8,
                     tiny_items=60, request_timeout_s=20, phase_timeout_s=60, recovery_timeout_s=60,
                     start_timeout_s=120)


def _assert_passed(result: dict) -> None:
    failing = [name for name, ok in result["checks"].items() if not ok]
    assert not failing, f"failed checks {failing}:\n{json.dumps(result, indent=1, default=str)[:6000]}"
    assert result["passed"]


def test_tally_counts_every_kind(ft):
    recs = [ft.Record("ok", 200, 0.010, 0.1, False), ft.Record("ok", 200, 0.030, 0.2, False),
            ft.Record("503", 503, 0.002, 0.3, True, "HTTP 503: full", True),
            ft.Record("conn_error", None, 0.5, 0.4, False, "ServerDisconnectedError")]
    t = ft.tally({"records": recs, "unanswered": 1, "wall_s": 2.0, "timed_out": True, "load_avg_1m": ""}, 5)
    assert (t["ok"], t["503"], t["conn_error"], t["5xx"], t["unanswered"]) == (2, 1, 1, 0, 1)
    assert t["503_with_retry_after"] == 1 and t["errors_in_api_shape"] == 1
    assert t["throughput_rps"] == 1.0 and t["p50_503_ms"] == 2.0
    assert ft.failed(t) == 3  # the 503, the broken connection and the unanswered one


def test_cli_refuses_unknown_scenarios(ft, tmp_path):
    with pytest.raises(SystemExit) as info:
        ft.main(["no-such-scenario", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert not list(tmp_path.iterdir())


def test_a_killed_replica_is_replaced_and_then_all_succeed(ft, cfg):
    r = ft.scenario_replica_kill(cfg)
    during, after = r["phases"]["during_kill"], r["phases"]["after_recovery"]
    assert r["killed_pid"] in r["replica_pids"] and r["killed_pid"] not in r["pids_after"]
    assert r["replacement_pids"] and r["recovery_s"] is not None
    assert during["unanswered"] == during["timeout"] == during["other"] == 0, during
    assert ft.failed(during) <= cfg.concurrency
    assert after["ok"] == cfg.requests, after
    _assert_passed(r)


@pytest.mark.slow
def test_two_nodes_survive_losing_the_worker_node(ft, cfg):
    r = ft.scenario_two_nodes(cfg)
    assert sorted(r["replica_nodes"].values()) == ["head", "worker"], r["replica_nodes"]
    before, during, after = (r["phases"][k] for k in ("before", "during_kill", "after"))
    assert before["ok"] == after["ok"] == cfg.requests, (before, after)
    assert during["unanswered"] == during["timeout"] == during["other"] == 0, during
    assert ft.failed(during) <= cfg.concurrency
    assert all(r["replica_nodes"].get(str(p)) == "head" for p in r["pids_after"])
    _assert_passed(r)
