"""``python -m l2rec_kernels.train`` / ``python -m l2rec_kernels.evaluate`` on the demo
fixture (tiny backbone, a few steps): the checkpoint layout, evaluation from the saved
backbone, the metrics table and its JSON, bad input, and DDP under torchrun (2 CPU
processes give the 1-process losses and weights; only rank 0 writes the checkpoints)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from l2rec_kernels.cli import evaluate, train
from l2rec_kernels.cli._run import run
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.training.backbone import load_backbone

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = f"movielens:{ROOT / 'tests/data/interactions/ml-demo'}"
TOY = f"csv:{ROOT / 'tests/data/interactions/csv'}"
SMALL = ["--tiny-hidden", "32", "--tiny-heads", "2", "--tiny-kv-heads", "1", "--behavior-dim", "16",
         "--pref-dim", "16", "--max-history", "8", "--max-prompt-tokens", "64", "--no-progress",
         "--logging-steps", "1", "--seed", "0", "--lr", "3e-3", "--sasrec-epochs", "2"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _train(out, *extra) -> None:
    assert train.main(["--data", DEMO, "--backbone", "tiny", "--out", str(out), *SMALL, *extra]) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with an evaluation (and save) every 2 steps."""
    out = tmp_path_factory.mktemp("train") / "ckpt"
    _train(out, "--max-steps", "4", "--batch-size", "8", "--eval-steps", "2")
    return out


def test_train_writes_a_servable_checkpoint(trained, capsys):
    files = set(os.listdir(trained))
    assert {"l2rec_config.json", "l2rec_weights.safetensors", "l2rec_training.json", "titles.json",
            "backbone", "checkpoints"} <= files
    assert sorted(os.listdir(trained / "checkpoints")) == ["checkpoint-2", "checkpoint-4"]
    backbone, _ = load_backbone(trained / "backbone")  # a plain Hugging Face directory
    model = FusedL2Rec.from_pretrained(trained, backbone=backbone)  # the weight digest matches
    assert model.config.num_items == 150 == len(json.loads((trained / "titles.json").read_text()))
    assert not any(k.startswith("backbone.") for k in load_file(trained / "l2rec_weights.safetensors"))
    info = json.loads((trained / "l2rec_training.json").read_text())
    assert info["backbone"] == {"kind": "tiny", "path": "backbone"} and info["data"] == DEMO
    inner = json.loads((trained / "checkpoints/checkpoint-2/l2rec_training.json").read_text())
    assert inner["backbone"]["path"] == os.path.join("..", "..", "backbone")
    state = json.loads((trained / "checkpoints/checkpoint-4/trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_NDCG@10" in h]
    assert [h["step"] for h in evals] == [2, 4]
    assert all(0 <= h["eval_NDCG@10"] <= h["eval_HR@10"] <= 1 for h in evals)
    best = max(evals, key=lambda h: h["eval_NDCG@10"])["step"]
    # the saved model is the best checkpoint's
    for k, v in load_file(trained / f"checkpoints/checkpoint-{best}/l2rec_weights.safetensors").items():
        assert torch.equal(v, load_file(trained / "l2rec_weights.safetensors")[k]), k


def test_resume_last_reproduces_the_run_across_an_epoch(tmp_path, capsys):
    """The suite's one resume test. A 7-step run (5 steps an epoch, a checkpoint every 3),
    copied and cut back to its step-3 checkpoint, resumed with --resume-from-checkpoint last
    (the newest checkpoint found, the saved tiny backbone reloaded), crosses the epoch
    boundary and ends with the uninterrupted run's weights, having trained steps 4 to 7 only
    (a resume that silently started over would give the same weights in 7 steps)."""
    full = tmp_path / "full"
    run_args = ("--max-steps", "7", "--batch-size", "64", "--eval-steps", "3", "--train-positions", "1",
                "--save-total-limit", "3")
    _train(full, *run_args)
    assert sorted(os.listdir(full / "checkpoints")) == ["checkpoint-3", "checkpoint-6", "checkpoint-7"]
    out = tmp_path / "cut"
    shutil.copytree(full, out)
    for later in ("checkpoint-6", "checkpoint-7"):
        shutil.rmtree(out / "checkpoints" / later)
    (out / "l2rec_weights.safetensors").unlink()
    capsys.readouterr()
    _train(out, *run_args, "--resume-from-checkpoint", "last")
    steps_logged = [line for line in capsys.readouterr().out.splitlines() if "'grad_norm'" in line]
    assert len(steps_logged) == 4
    want = load_file(full / "checkpoints/checkpoint-7/l2rec_weights.safetensors")
    got = load_file(out / "checkpoints/checkpoint-7/l2rec_weights.safetensors")
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


def test_evaluate_cli_prints_and_writes_the_table(trained, tmp_path):
    out = tmp_path / "m.json"
    before = sorted(os.listdir(trained))
    proc = subprocess.run([sys.executable, "-m", "l2rec_kernels.evaluate", "--checkpoint", str(trained),
                           "--backbone", "tiny", "--json", str(out), "--sampled"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(trained)) == before  # evaluation writes nothing into the checkpoint
    table = json.loads(out.read_text())
    assert list(table) == ["model", "popularity", "random"]
    for row in table.values():
        assert list(row) == ["HR@10", "NDCG@10", "MRR", "sampled HR@1"]
        assert 0 <= row["NDCG@10"] <= row["HR@10"] <= 1 and 0 < row["MRR"] <= 1
    lines = proc.stdout.splitlines()
    assert any("test split" in line and "300 users" in line and "150 items" in line for line in lines)
    assert any(line.split()[:1] == ["popularity"] for line in lines)

    # An intermediate Trainer checkpoint finds the saved tiny backbone by itself; the
    # validation split, in the batches Trainer evaluated (2 x --batch-size), gives the
    # metrics Trainer logged for it.
    state = json.loads((trained / "checkpoints/checkpoint-4/trainer_state.json").read_text())
    logged = next(h for h in state["log_history"] if h.get("step") == 2 and "eval_NDCG@10" in h)
    valid = tmp_path / "v.json"
    assert evaluate.main(["--checkpoint", str(trained / "checkpoints/checkpoint-2"), "--split", "valid",
                          "--json", str(valid), "--batch-size", "16"]) == 0
    got = json.loads(valid.read_text())["model"]
    assert got["NDCG@10"] == pytest.approx(logged["eval_NDCG@10"], abs=1e-6)
    assert got["MRR"] == pytest.approx(logged["eval_MRR"], abs=1e-6)


def test_bad_input_is_one_clear_error(trained, tmp_path, capsys):
    def error(main, prog, *argv):
        assert run(main, prog, list(argv)) == 2
        return capsys.readouterr().err

    assert "--backbone /nonexistent: not a directory" in error(
        train.main, "train", "--data", DEMO, "--backbone", "/nonexistent", "--out", str(tmp_path / "a"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"")
    assert "pickled weights are not loaded" in error(
        train.main, "train", "--data", DEMO, "--backbone", str(pickled), "--out", str(tmp_path / "a"))
    assert "--batch-size must be >= 1" in error(
        train.main, "train", "--data", DEMO, "--backbone", "tiny", "--out", str(tmp_path / "a"),
        "--batch-size", "0")
    if not torch.cuda.is_available():
        assert "no CUDA device" in error(train.main, "train", "--data", DEMO, "--backbone", "tiny",
                                         "--out", str(tmp_path / "a"), "--bf16")
    assert "no checkpoint in" in error(train.main, "train", "--data", DEMO, "--backbone", "tiny",
                                       "--out", str(tmp_path / "empty"), "--resume-from-checkpoint", "last")
    assert "not a directory" in error(evaluate.main, "evaluate", "--checkpoint", str(tmp_path / "none"))
    assert "evaluate on the data it was trained on" in error(
        evaluate.main, "evaluate", "--checkpoint", str(trained), "--data", TOY, "--min-interactions", "3")


# Records, per torchrun rank, every path a Python-level write opens or creates (audit hooks:
# builtins.open in a writing mode, os.mkdir). Every JSON file of a checkpoint goes through it,
# so a rank that wrote a model (save_pretrained writes its l2rec_config.json) shows up.
_TRACE_HOOK = textwrap.dedent("""
    import os, sys
    _rank, _dir = os.environ.get("RANK"), TRACE_DIR
    if _rank is not None and _dir:
        _log = os.path.join(_dir, "rank" + _rank + ".txt")
        _writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

        def _hook(event, args, _open=open, _log=_log):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2]
                if any(c in mode for c in "wax+") if mode is not None else flags & _writes:
                    path = os.fsdecode(args[0])
                    if path != _log:
                        with _open(_log, "a") as f:
                            f.write("open " + os.path.abspath(path) + "\\n")
            elif event == "os.mkdir":
                with _open(_log, "a") as f:
                    f.write("mkdir " + os.path.abspath(os.fsdecode(args[0])) + "\\n")

        sys.addaudithook(_hook)
""")


@pytest.mark.xdist_group("ddp")
def test_torchrun_two_processes_match_one_and_only_rank0_writes(tmp_path):
    # (stage 2 alone: stage 1's batches differ between 1 and 2 processes, so its encoders
    # would too)
    steps = ["--max-steps", "3", "--eval-steps", "3", "--early-stopping-patience", "0", "--no-sasrec-stage"]
    # Evaluation batches that split the 300 validation users evenly (30 of 10; 30 of 5 per
    # process): Trainer averages per-batch mean losses, and a padded last shard in the
    # distributed sampler weighs some batches wrongly, which is not what this test is about.
    one = tmp_path / "one"
    _train(one, *steps, "--batch-size", "8", "--eval-batch-size", "10")

    hook = tmp_path / "hook"
    hook.mkdir()
    trace = tmp_path / "trace"
    trace.mkdir()
    (hook / "sitecustomize.py").write_text(f"TRACE_DIR = {str(trace)!r}\n" + _TRACE_HOOK)
    two = tmp_path / "two"
    env = {**ENV, "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "l2rec_kernels.train", "--data", DEMO, "--backbone", "tiny", "--out", str(two), *SMALL,
         *steps, "--batch-size", "4", "--eval-batch-size", "5"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 per device x 2 process(es) x 1 accumulation = 8 examples" in proc.stdout

    def history(run):
        return json.loads((run / "checkpoints/checkpoint-3/trainer_state.json").read_text())["log_history"]

    h1, h2 = history(one), history(two)
    losses1 = [h["loss"] for h in h1 if "loss" in h]
    losses2 = [h["loss"] for h in h2 if "loss" in h]
    assert len(losses1) == len(losses2) == 3
    assert losses2 == pytest.approx(losses1, rel=1e-5)
    grads1, grads2 = ([h["grad_norm"] for h in h if "grad_norm" in h] for h in (h1, h2))
    assert grads2 == pytest.approx(grads1, rel=1e-4)
    eval1, eval2 = (next(x for x in h if "eval_loss" in x) for h in (h1, h2))
    assert eval2["eval_loss"] == pytest.approx(eval1["eval_loss"], rel=1e-4)
    assert eval2["eval_NDCG@10"] == pytest.approx(eval1["eval_NDCG@10"], abs=0.01)
    w1, w2 = (load_file(run / "l2rec_weights.safetensors") for run in (one, two))
    assert w1.keys() == w2.keys()
    # Adam moves every element by about lr (3e-3) per step whatever its gradient's size, so
    # summation-order rounding in near-zero gradients (the expert B matrices start at zero)
    # shows in the weights: bound it at 1% of one step.
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=3e-5, msg=k)

    # Rank 0 wrote the model and the checkpoints; rank 1 wrote nothing there: the only file
    # Trainer has each process write is its own RNG state (rng_state_1.pth, written by
    # torch.save in C++, so not in this trace).
    writes = {r: (trace / f"rank{r}.txt").read_text().splitlines() for r in (0, 1)}
    out = str(two.resolve())
    opened = {r: [line.split(" ", 1)[1] for line in writes[r] if line.startswith("open ") and
                  line.split(" ", 1)[1].startswith(out)] for r in (0, 1)}
    assert os.path.join(out, "l2rec_config.json") in opened[0]
    assert os.path.join(out, "checkpoints", "checkpoint-3", "trainer_state.json") in opened[0]
    assert opened[1] == [], opened[1]
    ckpt = set(os.listdir(two / "checkpoints/checkpoint-3"))
    assert {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt", "l2rec_weights.safetensors"} <= ckpt
