"""The ``train`` section of bench/latency.py (a library: no command line of its own):
one optimizer step of FusedL2Rec vs L2Rec.

A step is what a trainer does per batch: the forward with labels (cross-entropy over the
whole catalogue plus the config's auxiliary losses), ``loss.backward()``, ``AdamW.step()``
and ``zero_grad()``. Only L2Rec's trainable parameters (experts, routers, fusion, scorer)
get gradients; the backbone is frozen.

Providers:

* ``L2Rec``: the reference, two backbone passes (one per view); the speedups are over it.
* ``FusedL2Rec[auto]``: the fused model with its default backend, ``"auto"``: no flag, as a
  user would train it. If ``auto`` cannot train on this device (it picks an inference-only
  kernel under grad mode), a warning says so and ``FusedL2Rec[torch]`` is timed instead.

Both models share one set of weights (``FusedL2Rec.from_reference``), each has its own
AdamW over them, and both walk the same batches in the same order. Before timing, each
case checks on its first batch that the two compute the same work: the loss and the
trainable parameters' gradients against the reference's, as relative errors (norm of the
difference over the reference's norm): all gradients together (``grad_rel_err``; fp32:
<= 1e-5, docs/design.md section 6) and the worst single parameter (``grad_rel_err_worst``,
``grad_worst``; fp32: <= 1e-4, the test suite's bound: a softmax router's bias gets a
gradient whose entries nearly cancel, so its relative error is larger). The errors go into
the rows' ``config`` JSON and a warning on stderr past the tolerance.

Precision: in fp32 (the CPU default) everything runs in fp32. With a 16-bit ``--dtype``
(bf16 on a GPU, the default there) the frozen backbone is stored in that dtype, L2Rec's
own parameters stay fp32 (the optimizer's master weights) and the forward runs under
``torch.autocast`` in that dtype, as mixed-precision training does.

Sizes (``AXES``: the model section's; ``default_sizes``): the users per batch (B), the
base model shape (bench/model_bench.py ``MODEL_SHAPES``) and its seq_len, layers,
experts, rank and items. By default ``cpu-small`` and ``cpu-small-qwen3-paper`` at B = 16
on the CPU (the training goals of issue 24), ``qwen3-0.6b-paper`` at B = 8, 16 on a
GPU; ``--quick``: ``cpu-small`` at B = 8. E.g.

    python bench/latency.py --sections train --set train.users=16 --threads 1 --rounds 9
    python bench/latency.py --set train.shape=qwen3-0.6b-paper --set train.users=16 --device cuda
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys

import model_bench
import torch
from _report import REFERENCE_NOTE, Case, RunConfig, all_sizes, stats_rows
from _timing import Rotation, interleaved
from model_bench import (
    CPU_QWEN3_PAPER_SHAPE,
    CPU_SHAPE,
    QWEN3_06B_SHAPE,
    SHAPE_FIELDS,
    ModelShape,
    per_second,
    shape_cases,
)

from l2rec_kernels import FusedL2Rec, L2Rec
from l2rec_kernels.models.config import NUM_VIEWS
from l2rec_kernels.models.tiny import synthetic_batch, tiny_backbone

AXES = dict(model_bench.AXES)  # the same sizes as the model section
REFERENCE = "L2Rec"
FUSED_BACKEND = "auto"  # the default: what a user gets without a flag
LEARNING_RATE = 1e-4
# (all gradients together, worst parameter): relative errors FusedL2Rec vs L2Rec may reach
GRAD_TOL = {torch.float32: (1e-5, 1e-4)}
AUTOCAST_GRAD_TOL = (5e-2, 1e-1)  # 16-bit autocast: both models round, differently
REFERENCE_NOTE.setdefault("train", "one AdamW step (forward with labels, backward, step, zero_grad); "
                                   "reference = L2Rec (two backbone passes); no floor")


def build_models(shape: ModelShape, device: torch.device,
                 dtype: torch.dtype) -> tuple[L2Rec, FusedL2Rec]:
    """(L2Rec, FusedL2Rec[auto]) over one backbone and one set of weights, in train mode.
    16-bit ``dtype``: the frozen backbone in it, L2Rec's own parameters in fp32."""
    backbone = tiny_backbone(shape.arch, hidden=shape.hidden, layers=shape.layers,
                             heads=shape.heads, kv_heads=shape.kv_heads,
                             intermediate=shape.intermediate, head_dim=shape.head_dim,
                             vocab=shape.vocab, max_positions=max(512, shape.seq_len)).to(device)
    ref = L2Rec(backbone, shape.config())
    with torch.no_grad():  # random experts: B = 0 (LoRA's start) would zero A's gradients
        for experts in ref.experts.values():
            experts.lora_b.normal_(0, 0.02)
            if experts.shared_b is not None:
                experts.shared_b.normal_(0, 0.02)
    if dtype != torch.float32:
        ref.to_inference_dtype(dtype)  # backbone (rotary buffers kept) and experts in dtype...
        ref.experts.float()            # ... the experts back to fp32: they are trained
    ref.validate_inputs = False  # time the models, not the input checks
    fused = FusedL2Rec.from_reference(ref, backend=FUSED_BACKEND)
    fused.validate_inputs = False
    ref.train()
    fused.train()
    return ref, fused


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train_step(model, optimizer, batch: dict, device: torch.device, dtype: torch.dtype,
               step: bool = True) -> torch.Tensor:
    """One training step on ``batch`` (with labels); the detached loss. ``step=False``:
    forward and backward only, the gradients left in ``.grad``. Grad mode is forced on:
    the timing helpers call providers under ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        with _autocast(device, dtype):
            loss = model(**batch).loss
        loss.backward()
        if step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    scale = want.norm().item()
    diff = (got - want).norm().item()
    return diff / scale if scale > 0 else diff


def check_same_work(ref, fused, batch: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """{"loss_rel_err", "grad_rel_err" (all trainable gradients as one vector),
    "grad_rel_err_worst", "grad_worst" (the worst parameter and its name)} of ``fused``
    against ``ref`` on ``batch``: forward and backward only, no step, gradients cleared after."""
    params = trainable(ref)
    zero = lambda p: torch.zeros_like(p)  # a parameter with no gradient
    loss_ref = train_step(ref, None, batch, device, dtype, step=False)
    want = {n: (zero(p) if p.grad is None else p.grad.detach().clone()) for n, p in params.items()}
    ref.zero_grad(set_to_none=True)
    loss_fused = train_step(fused, None, batch, device, dtype, step=False)
    # the same Parameter objects: fused shares ref's tensors
    got = {n: (zero(p) if p.grad is None else p.grad.detach()) for n, p in params.items()}
    errs = {n: _rel(got[n], want[n]) for n in params}
    worst = max(errs, key=errs.get)
    flat = lambda g: torch.cat([t.double().flatten() for t in g.values()])
    out = {"loss_rel_err": _rel(loss_fused, loss_ref), "grad_rel_err": _rel(flat(got), flat(want)),
           "grad_rel_err_worst": errs[worst], "grad_worst": worst}
    fused.zero_grad(set_to_none=True)
    return out


def train_batches(shape: ModelShape, users: int, device: torch.device, rotate: int = 2) -> list[dict]:
    """``rotate`` batches of ``users`` prompts with histories and labels (catalogue ids)."""
    out = []
    for seed in range(rotate):
        b = synthetic_batch(users, shape.seq_len, 20, vocab=shape.vocab, num_items=shape.num_items,
                            ragged=False, seed=seed, device=device)
        g = torch.Generator().manual_seed(1000 + seed)
        b["labels"] = torch.randint(1, shape.num_items + 1, (users,), generator=g).to(device)
        out.append(b)
    return out


def train_providers(shape: ModelShape, users: int, device: torch.device, dtype: torch.dtype,
                    rotate: int = 2) -> tuple[dict, dict]:
    """({provider: zero-arg training step}, the same-work check's errors) for one case."""
    ref, fused = build_models(shape, device, dtype)
    batches = train_batches(shape, users, device, rotate)
    try:
        check = check_same_work(ref, fused, batches[0], device, dtype)
    except RuntimeError as e:  # "auto" picked an inference-only kernel under grad mode
        print(f"# WARNING train: FusedL2Rec[{FUSED_BACKEND}] cannot train on {device}: {e}; "
              f"timing FusedL2Rec[torch] instead", file=sys.stderr)
        fused.zero_grad(set_to_none=True)
        fused.backend = "torch"
        check = check_same_work(ref, fused, batches[0], device, dtype)
    tol, tol_worst = GRAD_TOL.get(dtype, AUTOCAST_GRAD_TOL)
    ok = max(check["loss_rel_err"], check["grad_rel_err"]) <= tol and check["grad_rel_err_worst"] <= tol_worst
    status = "ok" if ok else "MISMATCH"
    print(f"# train {shape.name} B={users}: FusedL2Rec vs L2Rec relative errors: loss "
          f"{check['loss_rel_err']:.1e}, gradients {check['grad_rel_err']:.1e} (tolerance {tol:g}), "
          f"worst parameter {check['grad_rel_err_worst']:.1e} {check['grad_worst']} (tolerance "
          f"{tol_worst:g}): {status}", file=sys.stderr)
    if status != "ok":
        print(f"# WARNING train: FusedL2Rec[{fused.backend}] does not compute L2Rec's gradients "
              "here; its speedup does not compare equal work", file=sys.stderr)

    def stepper(model):  # each provider walks the same batches in the same order
        opt = torch.optim.AdamW(list(trainable(model).values()), lr=LEARNING_RATE)
        nxt = Rotation(batches)
        return lambda: train_step(model, opt, nxt(), device, dtype)

    providers = {REFERENCE: stepper(ref), f"FusedL2Rec[{fused.backend}]": stepper(fused)}
    return providers, check


def default_sizes(cfg: RunConfig) -> dict[str, list]:
    if cfg.quick:
        shapes, users = [CPU_SHAPE.name], [8]
    elif cfg.cuda:
        # (at B = 32 the reference keeps 45 GB or more of [B, T, E, d_out] bf16 expert
        # products for its backward at this shape: B = 16, the goal's, is the largest default)
        shapes, users = [QWEN3_06B_SHAPE.name], [8, 16]
    else:
        shapes, users = [CPU_SHAPE.name, CPU_QWEN3_PAPER_SHAPE.name], [16]
    return {"users": users, "shape": shapes, **{axis: [None] for axis in SHAPE_FIELDS}}


def cases(cfg: RunConfig, emit, sizes: dict[str, list] | None = None) -> list[Case]:
    """The train section: one case per combination of the sizes."""
    timing = cfg.timing(3, 1) if cfg.quick else cfg.timing(10, 2)

    def run(shape: ModelShape, users: int) -> None:
        providers, check = train_providers(shape, users, cfg.device, cfg.dtype)
        stats = interleaved(providers, cfg.device, **timing)
        tokens = NUM_VIEWS * users * shape.seq_len
        config = {**dataclasses.asdict(shape), "users": users, "step": "AdamW",
                  "precision": "fp32" if cfg.dtype == torch.float32 else "autocast", **check}
        for row in stats_rows("train", shape.label(users), stats, x=("users", users), config=config,
                              reference=REFERENCE, dtype=cfg.dtype, extra=per_second(tokens, users),
                              providers=providers if cfg.memory else None, device=cfg.device):
            emit(row)
        del providers
        if cfg.cuda:
            torch.cuda.empty_cache()

    return shape_cases("train", all_sizes(default_sizes(cfg), sizes), run)
