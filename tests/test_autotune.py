"""``backend="auto"`` as a measured choice (l2rec_kernels/_autotune.py), tested on the CPU.

CPU tensors are never measured in use; here the ``tuned`` fixture makes the CPU a measured
device type and injects the timer, so the choice is whatever the timer says, and the
Triton interpreter stands in for the GPU's triton path. Nothing is timed for real.
"""

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from tolerances import REL_TOL, rel_err
from torch._dynamo.utils import counters

import l2rec_kernels
from l2rec_kernels import _autotune, dpmoe_linear, route, settings, topk_items
from l2rec_kernels.cli import tune
from l2rec_kernels.ops.dpmoe_linear import dpmoe_linear_torch

TOL = REL_TOL[torch.float32]
OP = "fake_op"


class Timer:
    """The injected timer: ``ms[candidate]`` per candidate; records what it was given and
    (``run``) calls every candidate, keeping its output."""

    def __init__(self, ms: dict, run: bool = False) -> None:
        self.ms, self.run, self.calls, self.outputs = ms, run, [], []

    def __call__(self, thunks, device):
        self.calls.append(tuple(thunks))
        if self.run:
            self.outputs.append({c: fn() for c, fn in thunks.items()})
        return {c: self.ms[c] for c in thunks}


def refuse(thunks, device):
    raise AssertionError("measured where nothing may be measured")


@pytest.fixture
def tuned(tmp_path, monkeypatch):
    """A fresh cache folder, the CPU measured, the timer injectable (refusing by default)."""
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setenv(settings.CACHE_DIR, str(tmp_path))
    monkeypatch.delenv(settings.AUTOTUNE, raising=False)
    monkeypatch.setattr(_autotune, "MEASURED_DEVICE_TYPES", ("cuda", "cpu"))
    _autotune.clear_memory_cache()
    previous = _autotune.set_timer(refuse)
    yield tmp_path
    _autotune.set_timer(previous)
    _autotune.clear_memory_cache()


def cache_file(tmp_path) -> str:
    return os.path.join(tmp_path, "autotune", "cpu.json")


def read_entries(tmp_path) -> dict:
    with open(cache_file(tmp_path)) as f:
        return json.load(f)["entries"]


def choose(key: int = 8, default: str = "torch", candidates=("torch", "triton")) -> str:
    """A choice for a made-up op (calls that do nothing): ``key`` is its row count."""
    return _autotune.choose(OP, torch.device("cpu"), torch.float32, (("rows", key),), (("d", 3),),
                            candidates, default, lambda: {c: (lambda: None) for c in candidates})


def dpmoe_inputs(m=7, d_in=12, d_out=10, experts=3, rank=2, seqs=3):
    g = torch.Generator().manual_seed(m)
    r = lambda *s: torch.randn(*s, generator=g)
    cu = torch.tensor([0, 2, 2, m], dtype=torch.int32)[: seqs + 1]
    return (r(m, d_in), r(d_out, d_in), r(d_out), r(2, experts, rank, d_in) * 0.3,
            r(2, experts, d_out, rank) * 0.3, torch.softmax(r(seqs, experts), -1),
            torch.tensor([0, 1, 1], dtype=torch.int32)[:seqs], cu, 2.0)


# ----------------------------------------------------------------------------- the choice
def test_buckets():
    assert [_autotune.row_bucket(n) for n in (0, 1, 2, 3, 64, 65, 1000)] == [0, 1, 2, 4, 64, 128, 1024]
    key = _autotune.bucket_key("dpmoe_linear", torch.bfloat16, (("rows", 1000),), (("d_in", 1024),))
    assert key == "dpmoe_linear bfloat16 rows=1024 d_in=1024"
    assert _autotune.slug("NVIDIA H200") == "nvidia-h200" and _autotune.slug("??") == "device"


@pytest.mark.interpreter
def test_dpmoe_linear_follows_the_timer(tuned):
    """The choice is the timer's faster candidate, the timer gets both paths on this call's
    own inputs (same outputs), and the call's result is the chosen path's."""
    args = dpmoe_inputs()
    want = dpmoe_linear_torch(*args)
    timer = Timer({"triton": 2.0, "torch": 1.0}, run=True)
    _autotune.set_timer(timer)
    got = dpmoe_linear(*args, backend="auto")
    assert len(timer.calls) == 1 and set(timer.calls[0]) == {"triton", "torch"}
    out = timer.outputs[0]
    assert rel_err(out["triton"], want) < TOL and torch.equal(out["torch"], want)
    assert torch.equal(got, want)  # the torch path ran
    (key, entry), = read_entries(tuned).items()
    assert key.startswith("dpmoe_linear float32 rows=8 d_in=12 d_out=10 V=2 E=3 r=2 Es=0")
    assert entry["choice"] == "torch" and entry["ms"] == {"triton": 2.0, "torch": 1.0}
    assert dpmoe_linear(*args, backend="auto").shape == want.shape and len(timer.calls) == 1  # cached

    # Another bucket (more rows), where the timer prefers triton: the triton path runs.
    args = dpmoe_inputs(m=20)
    timer = Timer({"triton": 1.0, "torch": 2.0})
    _autotune.set_timer(timer)
    got = dpmoe_linear(*args, backend="auto")
    assert len(timer.calls) == 1 and not torch.equal(got, dpmoe_linear_torch(*args))  # not torch's
    assert rel_err(got, dpmoe_linear_torch(*args)) < TOL
    assert sorted(e["choice"] for e in read_entries(tuned).values()) == ["torch", "triton"]


@pytest.mark.interpreter
def test_route_and_topk_items_follow_the_timer(tuned):
    logits = torch.randn(5, 4)
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 3.0}, run=True))
    gates = route(logits, top_k=2, backend="auto")
    assert rel_err(gates, route(logits, top_k=2, backend="torch")) < TOL
    query, items = torch.randn(3, 16), torch.randn(50, 16)
    exclude = torch.tensor([[1, -1], [2, 3], [-1, -1]])
    _autotune.set_timer(Timer({"triton": 3.0, "torch": 1.0}))
    scores, ids = topk_items(query, items, 5, exclude=exclude, backend="auto")
    want_scores, want_ids = topk_items(query, items, 5, exclude=exclude, backend="torch")
    assert torch.equal(ids, want_ids) and torch.equal(scores, want_scores)
    entries = read_entries(tuned)
    assert {k.split()[0]: e["choice"] for k, e in entries.items()} == {"route": "triton",
                                                                      "topk_items": "torch"}
    assert "topk_items float32 queries=4 exclude=2 items=50 d=16 k=5" in entries


def test_ties_go_to_the_default(tuned):
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 1.0}))
    assert choose(default="triton", candidates=("triton", "torch")) == "triton"
    assert choose(key=100, default="torch") == "torch"


# ----------------------------------------------------------------------------- where it is not measured
def test_cpu_tensors_take_the_torch_path_unmeasured(tmp_path, monkeypatch):
    monkeypatch.setenv(settings.CACHE_DIR, str(tmp_path))
    previous = _autotune.set_timer(refuse)
    try:
        args = dpmoe_inputs()
        assert torch.equal(dpmoe_linear(*args, backend="auto"), dpmoe_linear_torch(*args))
        route(torch.randn(4, 3), backend="auto")
        topk_items(torch.randn(2, 4), torch.randn(9, 4), 3, backend="auto")
    finally:
        _autotune.set_timer(previous)
    assert not os.path.exists(os.path.join(tmp_path, "autotune"))


@pytest.mark.interpreter
def test_grad_mode_takes_the_differentiable_path_unmeasured(tuned):
    """auto under grad mode, an input requiring grad: the torch path, nothing measured; an
    explicit triton keeps its clear error."""
    args = list(dpmoe_inputs())
    args[3] = args[3].requires_grad_()  # lora_a: a trained weight
    y = dpmoe_linear(*args, backend="auto")
    y.sum().backward()
    assert args[3].grad is not None
    with pytest.raises(RuntimeError, match="inference-only"):
        dpmoe_linear(*args, backend="triton")
    logits = torch.randn(4, 3, requires_grad=True)
    route(logits, top_k=2, backend="auto").sum().backward()
    assert logits.grad is not None
    with torch.no_grad():  # without grad mode the same call is measured
        _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
        dpmoe_linear(*args, backend="auto")
    assert len(read_entries(tuned)) == 1


def test_not_measured_while_compiling(tuned):
    """torch.compile(dynamic=False): no measurement; the default rule, or the cached choice
    of the (static) bucket, is traced."""

    @torch.compile(fullgraph=True, dynamic=False, backend="eager")
    def compiled(x):
        return x + (1 if choose(key=x.shape[0]) == "triton" else 2)

    assert compiled(torch.zeros(8)).tolist() == [2] * 8  # nothing cached: torch, unmeasured
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
    assert choose(key=16) == "triton"  # measured in eager mode, cached
    _autotune.set_timer(refuse)
    assert compiled(torch.zeros(16)).tolist() == [1] * 16  # a new static shape: the cached choice


@pytest.mark.parametrize("dynamic", [None, True])
def test_possibly_symbolic_sizes_take_the_default_without_recompiles(tuned, dynamic):
    """Where sizes may be symbolic (the default automatic dynamic shapes, dynamic=True) the
    graph takes the default, without specialising on a size: no recompile per bucket."""
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
    assert choose(key=8) == "triton"
    _autotune.set_timer(refuse)

    @torch.compile(fullgraph=True, dynamic=dynamic, backend="eager")
    def compiled(x):
        return x + (1 if choose(key=x.shape[0]) == "triton" else 2)

    for n in (5, 7, 100, 300):
        assert compiled(torch.zeros(n)).tolist() == [2] * n
    assert counters["stats"]["unique_graphs"] <= 2  # (automatic dynamic: static, then dynamic)


def test_no_measurement_in_a_sync_debug_mode_or_a_graph_capture(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    assert _autotune._may_measure(gpu)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 2)
    assert not _autotune._may_measure(gpu)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not _autotune._may_measure(gpu)


def test_measuring_can_be_turned_off(tuned, monkeypatch):
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
    assert choose(key=8) == "triton"
    monkeypatch.setenv(settings.AUTOTUNE, "0")
    _autotune.set_timer(refuse)
    assert choose(key=8) == "triton"    # cached: still used
    assert choose(key=64) == "torch"    # not cached: the default, unmeasured


# ----------------------------------------------------------------------------- the cache file
def test_the_cache_is_read_back_after_clearing_memory_and_in_a_fresh_process(tuned):
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
    assert choose() == "triton"
    _autotune.clear_memory_cache()
    _autotune.set_timer(refuse)
    assert choose() == "triton"
    code = textwrap.dedent(f"""
        import torch
        from l2rec_kernels import _autotune
        _autotune.MEASURED_DEVICE_TYPES = ("cpu",)
        def refuse(thunks, device):
            raise AssertionError("measured again")
        _autotune.set_timer(refuse)
        print(_autotune.choose({OP!r}, torch.device("cpu"), torch.float32, (("rows", 8),),
                               (("d", 3),), ("torch", "triton"), "torch",
                               lambda: {{c: (lambda: None) for c in ("torch", "triton")}}))
    """)
    env = {**os.environ, settings.CACHE_DIR: str(tuned)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "triton"


def test_entries_of_other_versions_are_measured_again(tuned, monkeypatch):
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
    assert choose() == "triton"
    monkeypatch.setattr(_autotune, "versions", lambda: {"l2rec_kernels": "0.0.0-other"})
    _autotune.set_timer(Timer({"triton": 2.0, "torch": 1.0}))
    assert choose() == "torch"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"format": 99, "entries": {}}'])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tuned, content):
    os.makedirs(os.path.dirname(cache_file(tuned)))
    with open(cache_file(tuned), "w") as f:
        f.write(content)
    _autotune._warned.clear()
    _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
    with pytest.warns(RuntimeWarning, match="ignoring the autotune cache"):
        assert choose() == "triton"
    assert list(read_entries(tuned)) == [f"{OP} float32 rows=8 d=3"]  # replaced by a good file


def _writer(cache_dir: str, worker: int, count: int, go) -> None:
    """One process of the concurrency test: ``count`` measurements, each written at once."""
    go.wait(30)  # every writer starts together
    os.environ[settings.CACHE_DIR] = cache_dir
    _autotune.MEASURED_DEVICE_TYPES = ("cpu",)
    _autotune.clear_memory_cache()
    _autotune.set_timer(lambda thunks, device: {c: float(i) for i, c in enumerate(thunks)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a half-written file read back would warn
        for i in range(count):
            choose(key=1000 * worker + i + 1)
    os._exit(0)  # skip the inherited interpreter's teardown


def test_concurrent_writers_do_not_corrupt_the_file(tuned):
    ctx = multiprocessing.get_context("fork")
    workers, count = 4, 40
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(tuned), w, count, go)) for w in range(workers)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * workers
    entries = read_entries(tuned)  # parses: whole
    want = {_autotune.bucket_key(OP, torch.float32, (("rows", 1000 * w + i + 1),), (("d", 3),))
            for w in range(workers) for i in range(count)}
    assert set(entries) == want  # nothing lost
    assert not [f for f in os.listdir(os.path.dirname(cache_file(tuned))) if f.startswith(".tmp-")]


# ----------------------------------------------------------------------------- reporting, tuning
def test_backend_info_shows_the_cached_choices(tuned, monkeypatch):
    info = l2rec_kernels.backend_info()
    json.dumps(info)
    if not torch.cuda.is_available():
        assert info["autotune"]["available"] is False and info["autotune"]["choices"] == {}
    # As on a GPU called "Fake GPU 9000": its file's choices are listed.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU 9000")
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    _autotune.device_name.cache_clear()
    try:
        _autotune.set_timer(Timer({"triton": 1.0, "torch": 2.0}))
        _autotune.choose(OP, torch.device("cuda", 0), torch.float16, (("rows", 3),), (), ("torch", "triton"),
                         "torch", lambda: {c: (lambda: None) for c in ("torch", "triton")})
        auto = l2rec_kernels.backend_info()["autotune"]
    finally:
        _autotune.device_name.cache_clear()
    assert auto["available"] is True
    assert auto["path"].endswith(os.path.join("autotune", "fake-gpu-9000.json"))
    assert auto["choices"] == {f"{OP} float16 rows=4": {
        "choice": "triton", "ms": {"torch": 2.0, "triton": 1.0}, "current": True}}


@pytest.mark.interpreter  # (the interpreter makes triton a candidate for CPU tensors)
def test_tune_fills_the_cache_for_a_model_shape(tuned, capsys):
    """``python -m l2rec_kernels.tune``: every op a forward and recommend call at the shape,
    measured (the timer prefers torch, so no interpreter work follows)."""
    _autotune.set_timer(Timer({"triton": 2.0, "torch": 1.0, "cuda": 3.0}))
    argv = ["--shape", "cpu-small", "--batch", "1,2", "--seq-len", "8", "--device", "cpu",
            "--dtype", "fp32", "--k", "10,5000"]
    assert tune.main(argv) == 0
    entries = read_entries(tuned)
    sizes = tune.linear_sizes(tune.MODEL_SHAPES["cpu-small"])
    assert sizes == [(512, 256), (512, 512), (512, 1376), (1376, 512)]  # k/v, q/o, gate/up, down
    ops = [k.split()[0] for k in entries]
    # 4 linears x (padded rows, last rows) x 2 batch sizes; route and topk_items (k = 10
    # only: 5000 is above the catalogue) per batch size; batch_metadata has one path here.
    assert ops.count("dpmoe_linear") == 16 and ops.count("route") == 2 and ops.count("topk_items") == 2
    assert "dpmoe_linear float32 rows=32 d_in=512 d_out=1376 V=2 E=4 r=8 Es=0 per_row_gates=0" in entries
    assert "dpmoe_linear float32 rows=4 d_in=1376 d_out=512 V=2 E=4 r=8 Es=0 per_row_gates=0" in entries
    assert all(e["choice"] == "torch" for e in entries.values())
    assert "20 bucket(s) measured for cpu-small on cpu" in capsys.readouterr().out
    _autotune.set_timer(refuse)
    assert tune.main([*argv, "--only-missing"]) == 0  # all cached: nothing measured
    assert "0 bucket(s) measured" in capsys.readouterr().out


def test_tune_refuses_a_device_that_is_not_measured(monkeypatch):
    monkeypatch.setattr(_autotune, "MEASURED_DEVICE_TYPES", ("cuda",))
    with pytest.raises(SystemExit):
        tune.main(["--shape", "cpu-small", "--device", "cpu"])


@pytest.mark.interpreter
def test_auto_times_only_the_backends_that_serve_the_inputs(tuned):
    """The dispatch table's limits decide the candidates: topk_items' triton serves k <= 4096,
    so a larger k leaves torch alone and nothing is timed; a smaller one times both."""
    from l2rec_kernels._dispatch import TRITON_MAX_K

    query, item_emb = torch.randn(2, 8), torch.randn(TRITON_MAX_K + 3, 8)
    topk_items(query, item_emb, TRITON_MAX_K + 1, backend="auto")  # the refusing timer stays off
    timer = Timer({"triton": 1.0, "torch": 2.0})
    _autotune.set_timer(timer)
    topk_items(query, item_emb, 3, backend="auto")
    assert [set(c) for c in timer.calls] == [{"triton", "torch"}]
