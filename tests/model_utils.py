"""Helpers shared by the model tests."""

from __future__ import annotations

import threading

import torch
from tolerances import REL_TOL, rel_err

from l2rec_kernels.models.config import L2RecConfig
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.reference import L2Rec
from l2rec_kernels.models.tiny import synthetic_batch, tiny_backbone

VOCAB = 128
NUM_ITEMS = 40


def randomize_(model, seed: int = 1, scale: float = 0.2) -> None:
    """Give every L2Rec tensor (expert B included) random values, so parity is not vacuous."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.own_state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype) * scale)
            del name


def make_reference(arch="llama", *, backbone=None, **cfg):
    """A randomised reference L2Rec on ``backbone`` (default: a new ``make_backbone(arch)``)
    with the tests' small config, ``cfg`` overriding it."""
    cfg.setdefault("num_items", NUM_ITEMS)
    cfg.setdefault("pref_dim", 24)
    cfg.setdefault("behavior_dim", 16)
    ref = L2Rec(make_backbone(arch) if backbone is None else backbone, L2RecConfig(**cfg))
    randomize_(ref)  # every trainable tensor random, expert B included
    return ref


def make_pair(arch="llama", backend="torch", *, backbone=None, **cfg):
    """A randomised reference L2Rec and a FusedL2Rec sharing its tensors."""
    ref = make_reference(arch, backbone=backbone, **cfg)
    return ref, FusedL2Rec.from_reference(ref, backend=backend)


# Gradients come back through every layer and sum over the batch: 10x the fp32 bound.
GRAD_TOL = 10 * REL_TOL[torch.float32]


def assert_same_gradients(ref, fused, b: dict, labels, tol: float = GRAD_TOL) -> set[str]:
    """Backpropagate the loss through each model; the same parameters must get gradients,
    within ``tol`` relative error. Returns their names."""
    ref(**b, labels=labels).loss.backward()
    want = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
    ref.zero_grad(set_to_none=True)  # the models share their parameters
    fused(**b, labels=labels).loss.backward()
    got = {n: p.grad for n, p in fused.named_parameters() if p.grad is not None}
    assert want.keys() == got.keys()
    for n in want:
        assert rel_err(got[n], want[n]) < tol, n
    return set(want)


def make_backbone(arch: str = "llama", **kw):
    kw.setdefault("vocab", VOCAB)
    return tiny_backbone(arch, hidden=32, layers=2, heads=4, kv_heads=2, intermediate=48, **kw)


def batch(n: int = 3, seq: int = 9, hist: int = 5, **kw):
    return synthetic_batch(n, seq, hist, vocab=VOCAB, num_items=NUM_ITEMS, **kw)


def repad(b: dict, side: str, extra: int = 0) -> dict:
    """The same prompts padded on ``side`` to their length + ``extra`` columns."""
    ids, mask = b["input_ids"], b["attention_mask"].bool()
    lengths = mask.sum(-1)
    width = int(lengths.max()) + extra
    out_ids = torch.zeros(ids.shape[0], width, dtype=ids.dtype)
    out_mask = torch.zeros(ids.shape[0], width, dtype=torch.long)
    for i in range(ids.shape[0]):
        tokens = ids[i][mask[i]]
        n = tokens.numel()
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        out_ids[i, sl] = tokens
        out_mask[i, sl] = 1
    return {"input_ids": out_ids, "attention_mask": out_mask, "history_ids": b["history_ids"]}


def run_in_threads(work, n: int) -> dict:
    """``work(i)`` for i in range(n), each in its own thread at once: {i: its result}. An
    exception in any thread fails the caller's test."""
    results, errors = {}, []

    def worker(i):
        try:
            results[i] = work(i)
        except Exception as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def paper_overrides(**kw) -> dict:
    """L2RecConfig.paper's fields, for make_pair (which sets num_items and small widths)."""
    cfg = L2RecConfig.paper(NUM_ITEMS).to_dict()
    for name in ("num_items", "pref_dim", "behavior_dim"):
        cfg.pop(name)
    return {**cfg, **kw}
