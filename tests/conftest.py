"""Test set-up.

Without a GPU, Triton kernels are tested on CPU tensors through Triton's interpreter,
which reads TRITON_INTERPRET when triton is imported: so it is set here, before any test
module (or the package) can import triton.

Two markers decide what runs where (both registered in pyproject.toml):

- ``gpu``: needs a CUDA GPU; skipped without one.
- ``interpreter``: puts CPU tensors through ``backend="triton"``, which only the Triton
  interpreter can run; skipped on a GPU machine, where TRITON_INTERPRET is not set (the
  ``device`` fixture's CUDA tensors test the same kernels compiled there).

``-p tests.simulate_gpu`` (tests/simulate_gpu.py) makes the collection logic below act as on
a GPU machine while tensors stay on the CPU.
"""

import os
import signal
import sys

import interpreter_patching
import pytest
import torch
from hypothesis import settings

# CI must be reproducible: on CI the property tests draw the same examples every run
# (a failure found locally is kept in .hypothesis/ and replayed first).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# CPU threads, set explicitly: the test models are tiny, so more threads buy little, and on a
# machine where other jobs hold the cores extra threads only contend. L2REC_THREADS overrides.
from l2rec_kernels import settings as l2rec_settings  # noqa: E402

torch.set_num_threads(l2rec_settings.threads() or 1)

# bench/gpu_session.sh runs the tests under `timeout`, whose SIGTERM would end pytest without
# its summary; with L2REC_TESTS_TERM_AS_INTERRUPT=1 it ends the run like Ctrl-C instead, so
# the counts and the failures so far are still printed (xdist's workers too get it).
if os.environ.get("L2REC_TESTS_TERM_AS_INTERRUPT") == "1":
    signal.signal(signal.SIGTERM, signal.default_int_handler)

HAS_GPU = torch.cuda.is_available()
# Collect and skip as on a GPU machine: with a real GPU, or simulated by tests/simulate_gpu.py.
SIMULATED_GPU = not HAS_GPU and "tests.simulate_gpu" in sys.modules
GPU_RUN = HAS_GPU or SIMULATED_GPU

if not HAS_GPU:  # (when simulating, the interpreter stands in for the device: DEVICE is the CPU)
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("triton was imported before tests/conftest.py could set TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
    # The interpreter's builtins patched once per launch instead of once per device-function
    # call (a speed-up only: tests/interpreter_patching.py); nothing without triton.
    interpreter_patching.install()

DEVICE = torch.device("cuda" if HAS_GPU else "cpu")


# Tests that start Ray (a local instance or a loopback cluster) or bind ports run in xdist
# groups (`make test` runs `-n auto --dist loadgroup`): the tests of one group on one worker,
# one after another, in collection order. A test is in a group when it says so itself
# (`pytest.mark.xdist_group("ray")`), when its module is in RAY_MODULES, or when it uses a
# fixture of RAY_FIXTURES (directly or through another fixture); the other tests of a module
# with Ray tests (the validator and core tests of test_serving.py, say) run on any worker.
#
# Different groups may run at the same time, on different workers: every Ray instance of the
# suite is its own (`ray.init(address="local")` or `ray start` with free ports and its own
# temp dir), on free ports for Ray's own servers and for HTTP, in its own session directory;
# the one fixed port, the dashboard agent's 52365, is taken by the first instance and the
# others' agents go on without their HTTP endpoint (a warning; nothing here uses it). So the
# groups are only what must share a worker: a session fixture (the one tiny_ray_server), or
# tests that find their actors among all the processes of the machine (test_batch_scoring),
# which must not see another test's. Three groups, so that the Ray tests, much of whose time
# is spent waiting (a server start, a replica's replacement, a node's loss), do not all
# queue up on one worker.
RAY_MODULES = {
    "test_faults.py": "ray-faults",           # its scenarios start servers and a 2-node cluster
    "test_real_checkpoint.py": "ray-serve",   # a server over a saved checkpoint
    "test_batch_scoring.py": "ray",           # Ray Data on a local instance in the test process
}
RAY_FIXTURES = {"tiny_ray_server": "ray-serve"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = getattr(item, "fixturenames", ())
        group = RAY_MODULES.get(item.path.name) or next(
            (g for name, g in RAY_FIXTURES.items() if name in fixtures), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    # The users of the shared tiny_ray_server first (a stable sort: otherwise in collection
    # order), so that it is stopped before the other Ray tests start their own servers.
    items.sort(key=lambda item: "tiny_ray_server" not in getattr(item, "fixturenames", ()))
    needs_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    needs_interpreter = pytest.mark.skip(
        reason="CPU tensors through backend='triton' need the Triton interpreter, which conftest "
               "turns on (TRITON_INTERPRET=1) only without a GPU; on a GPU the `device` tests run "
               "these kernels compiled")
    for item in items:
        if not HAS_GPU and item.get_closest_marker("gpu"):
            item.add_marker(needs_gpu)
        if GPU_RUN and item.get_closest_marker("interpreter"):
            item.add_marker(needs_interpreter)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker sends its collected ids to the controller
def pytest_collection_finish(session):
    users = [item for item in session.items if "tiny_ray_server" in getattr(item, "fixturenames", ())]
    _TINY_SERVER["last_user"] = users[-1] if users else None
    if getattr(session.config.option, "loadgroup", False):  # set in xdist's workers only
        _suffix_xdist_groups(session.items)


def _suffix_xdist_groups(items) -> None:
    """Make ``--dist loadgroup`` group on pytest >= 9.2 too. xdist (3.8) tells the controller a
    test's group by appending ``@group`` to its node id in the worker, through the ``_nodeid``
    field that pytest 9.2 no longer reads (node ids are structured there: pytest-xdist issue
    1386), so every group would be silently spread over the workers. Where xdist's suffix did
    not take, it is set here on the structured id; where it did (older pytest), nothing
    changes."""
    for item in items:
        names = {str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                 for m in item.iter_markers("xdist_group")}
        nodeid = item.nodeid
        if not names or nodeid.rfind("@") > nodeid.rfind("]"):  # no group, or already suffixed
            continue
        suffixed = f"{nodeid}@{'_'.join(sorted(names))}"
        node_id = getattr(item, "_id", None)
        if node_id is not None and hasattr(type(node_id), "parse"):
            item._id = type(node_id).parse(suffixed)
        else:
            item._nodeid = suffixed


@pytest.fixture
def device():
    return DEVICE


def loopback_port() -> int:
    """A free 127.0.0.1 TCP port for a test server, below the ephemeral range where Ray
    picks its own processes' ports (``l2rec_serving.launch.free_port``, which says why)."""
    from l2rec_serving.launch import free_port

    return free_port()


@pytest.fixture(scope="session")
def free_loopback_port():
    """``loopback_port`` for the tests that start servers of their own."""
    return loopback_port


# conftest's one shared Ray Serve server (the tiny_ray_server fixture): the running
# ServerProcess, and the last test (in run order) that uses it, after which it is stopped.
TINY_SERVER_ITEMS = 60
_TINY_SERVER: dict = {"server": None, "last_user": None}


@pytest.fixture
def tiny_ray_server():
    """``python -m l2rec_serving`` over the built-in tiny model (60 items, batches of up to 8,
    20 ms batch wait) on a free loopback port, shared by every test that only sends it
    requests (test_serving.py, test_serving_fuzz.py): a server start (Ray, Serve, a replica)
    costs more than all of those tests together. Started by its first user and stopped right
    after its last one (pytest_runtest_teardown below), since even an idle Ray keeps a tenth
    of a core busy; started again should a user come later after all (another test order).
    Tests that change a server's state (stop it, kill a replica) or need other settings
    start their own."""
    pytest.importorskip("ray.serve", reason="the serve extra (ray[serve]) is not installed")
    pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
    from l2rec_serving.launch import ServerProcess

    server = _TINY_SERVER["server"]
    if server is None or server.proc is None or server.proc.poll() is not None:
        _stop_tiny_server()
        server = ServerProcess(["--tiny-items", str(TINY_SERVER_ITEMS), "--max-batch-size", "8",
                                "--batch-wait-ms", "20"], port=loopback_port())
        _TINY_SERVER["server"] = server
        server.start()
    return server


def _stop_tiny_server() -> None:
    server, _TINY_SERVER["server"] = _TINY_SERVER["server"], None
    if server is not None:
        server.__exit__(None, None, None)  # SIGTERM (then SIGKILL if it hangs); closes its log


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    if item is _TINY_SERVER["last_user"]:
        _stop_tiny_server()


def pytest_sessionfinish(session):
    _stop_tiny_server()  # whatever happened: no server left behind


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
