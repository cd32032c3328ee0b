"""Compiled serving forwards over shape buckets: ``compile_for_serving``.

    runner = compile_for_serving(fused, mode="reduce-overhead")   # CUDA graphs on a GPU
    runner.warmup()                                # compile every bucket now, not per request
    scores, ids = runner.recommend(input_ids, attention_mask, history_ids, k=10)

Each batch is padded up to a (batch, length) bucket and the model's forward up to the
preference z runs as one ``torch.compile(fullgraph=True)`` graph; only the bucket's real
rows are returned. A bounded set of shapes reaches the compiled graph, so:

* ``mode="reduce-overhead"`` (CUDA): each bucket's graph is captured as a CUDA graph once
  and replayed, so a forward costs a few launches instead of hundreds;
* the graphs are compiled with dynamic shapes, so buckets share compiled code
  (``torch.compile`` still specialises a few sizes, batch 1 among them).

Why pad rather than compile every shape: a CUDA graph is fixed to its shapes, and serving
sees every batch size and prompt length.

What stays eager, and why:

* the input checks (``validate_inputs``): they read values (a host sync on a GPU), which a
  CUDA graph cannot contain; they run once per call before the graph, with the eager
  model's errors;
* in ``recommend``, the top-k: k and the exclusions vary per request, and it is one op
  (``FusedL2Rec``: the cached item table and ``topk_items``) after the graph.

Padding: extra rows repeat the batch's first row (so they are valid input); extra
columns are unattended positions on the side the batch is already padded on (the left
when every prompt ends on its last column). A user's result does not depend on either.
Batches larger than the largest batch bucket run in chunks of it.

Inference only (no gradients). The runner shares the model: changing the model's weights
in place is seen by the next call. ``torch.compile(model)`` itself compiles ``forward``
only; use this for ``recommend``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from .._compat import is_view
from .inputs import L2RecOutput, check_forward_inputs

DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SERVING_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def default_length_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``max_length``, then ``max_length`` itself."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    out, n = [], smallest
    while n < max_length:
        out.append(n)
        n *= 2
    return (*out, max_length)


def _check_buckets(name: str, buckets) -> tuple[int, ...]:
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets:
        raise TypeError(f"{name} must be a non-empty sequence of positive ints, got {buckets!r}")
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"{name} must hold positive ints, got {b!r} in {list(buckets)}")
    if list(buckets) != sorted(set(buckets)):
        raise ValueError(f"{name} must be strictly increasing, got {list(buckets)}")
    return tuple(buckets)


class ShapeBuckets:
    """The (batch, length) shapes a compiled forward runs at: each call's shape rounded up."""

    def __init__(self, batch: Sequence[int], length: Sequence[int]) -> None:
        self.batch = _check_buckets("batch_buckets", batch)
        self.length = _check_buckets("length_buckets", length)

    def batch_bucket(self, batch: int) -> int:
        """The smallest batch bucket >= batch (batches above the largest run in chunks)."""
        return next((b for b in self.batch if b >= batch), self.batch[-1])

    def length_bucket(self, length: int) -> int:
        """The smallest length bucket >= length; ValueError above the largest."""
        for t in self.length:
            if t >= length:
                return t
        raise ValueError(f"input_ids has {length} columns, more than the largest length bucket "
                         f"{self.length[-1]} (length_buckets={list(self.length)})")

    def __len__(self) -> int:
        return len(self.batch) * len(self.length)

    def __repr__(self) -> str:
        return f"ShapeBuckets(batch={list(self.batch)}, length={list(self.length)})"


def pad_batch(input_ids: torch.Tensor, mask: torch.Tensor, history_ids: torch.Tensor,
              rows: int, length: int, history: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, mask, history_ids) padded to [rows, length] and [rows, history].

    New rows repeat row 0 (valid input; their results are dropped). New prompt columns are
    unattended, on the left when every prompt ends on its last column (a left-padded or
    unpadded batch), else on the right; new history columns are the padding item 0.
    """
    batch, seq = input_ids.shape
    if rows > batch:
        again = torch.zeros(rows - batch, dtype=torch.long, device=input_ids.device)
        input_ids, mask, history_ids = (torch.cat([t, t[again]]) for t in (input_ids, mask, history_ids))
    if length > seq:
        left = bool(mask[:, -1].all())
        cols = (length - seq, 0) if left else (0, length - seq)
        input_ids = torch.nn.functional.pad(input_ids, cols, value=0)
        mask = torch.nn.functional.pad(mask, cols, value=False)
    if history > history_ids.shape[1]:
        history_ids = torch.nn.functional.pad(history_ids, (0, history - history_ids.shape[1]), value=0)
    return input_ids, mask, history_ids


class CompiledRecommender:
    """An ``L2Rec``/``FusedL2Rec`` whose forward runs as compiled graphs over shape buckets
    (module docstring). Build it with ``compile_for_serving``."""

    def __init__(self, model, *, mode: str = "default", backend: str = "inductor",
                 batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                 length_buckets: Sequence[int] | None = None) -> None:
        from .base import L2RecBase

        if not isinstance(model, L2RecBase):
            raise TypeError(f"model must be an L2Rec or FusedL2Rec, got {type(model).__name__}")
        if mode not in SERVING_MODES:
            raise ValueError(f"mode must be one of {list(SERVING_MODES)}, got {mode!r}")
        if not isinstance(backend, str) or not backend:
            raise TypeError(f"backend must be a torch.compile backend name, got {backend!r}")
        max_length = int(getattr(model.backbone.config, "max_position_embeddings", 0) or 2048)
        if length_buckets is None:
            length_buckets = default_length_buckets(max_length)
        self.buckets = ShapeBuckets(batch_buckets, length_buckets)
        if self.buckets.length[-1] > max_length:
            raise ValueError(f"length_buckets go up to {self.buckets.length[-1]}, more than the "
                             f"backbone's max_position_embeddings {max_length}")
        self.model = model.eval()
        self.mode = mode
        self.cuda_graphs = mode in ("reduce-overhead", "max-autotune")
        # Inductor's options take no mode with another backend (e.g. "eager" in tests).
        opts = {"mode": mode} if backend == "inductor" else {}
        self._compiled = torch.compile(self._preference_graph, fullgraph=True, dynamic=True,
                                       backend=backend, **opts)
        # One caller at a time: CUDA graph replays share their output buffers, and the GPU
        # runs one forward at a time anyway.
        self._lock = threading.Lock()

    def _preference_graph(self, input_ids, mask, history_ids):
        # The values were checked before padding (eager): no host sync in the graph.
        parts = self.model._forward_parts(input_ids, mask, history_ids, check_values=False)
        return parts["z"], parts["gates"]

    # ----------------------------------------------------------------- running
    def _check(self, input_ids, attention_mask, history_ids, candidate_ids=None) -> torch.Tensor:
        model = self.model
        mask = check_forward_inputs(input_ids, attention_mask, history_ids, candidate_ids, None,
                                    vocab_size=model.backbone.config.vocab_size,
                                    num_items=model.num_items, max_history=model.config.max_history,
                                    check_values=model.validate_inputs)
        if input_ids.shape[0] == 0:
            raise ValueError("input_ids must have at least one row (got an empty batch)")
        self.buckets.length_bucket(input_ids.shape[1])  # too long: the ValueError, now
        return mask

    def _run_chunk(self, input_ids, mask, history_ids) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq = input_ids.shape
        rows, length = self.buckets.batch_bucket(batch), self.buckets.length_bucket(seq)
        padded = pad_batch(input_ids, mask, history_ids, rows, length, self.model.config.max_history)
        # Dynamo guards on whether an input is a view (a chunk, or the caller's slice): give
        # the graph plain tensors always, so views do not compile graphs of their own.
        padded = [t.clone() if is_view(t) else t for t in padded]
        with self._lock:
            if self.cuda_graphs:  # a new replay may overwrite the previous one's outputs
                torch.compiler.cudagraph_mark_step_begin()
            z, gates = self._compiled(*padded)
            # Copies: the graph's output buffers are reused by its next replay.
            return z[:batch].clone(), gates[:, :batch].clone()

    @torch.no_grad()
    def preference(self, input_ids, attention_mask, history_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [B, pref_dim], gates [2, B, E]) for the batch, as the model computes them."""
        return self._preference(input_ids, self._check(input_ids, attention_mask, history_ids),
                                history_ids)

    def _preference(self, input_ids, mask, history_ids) -> tuple[torch.Tensor, torch.Tensor]:
        # (inputs checked) chunks of at most the largest batch bucket, one graph call each
        step = self.buckets.batch[-1]
        parts = [self._run_chunk(input_ids[i:i + step], mask[i:i + step], history_ids[i:i + step])
                 for i in range(0, input_ids.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([z for z, _ in parts]), torch.cat([g for _, g in parts], dim=1)

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask, history_ids,
                 candidate_ids: torch.Tensor | None = None) -> L2RecOutput:
        """The model's forward (inference: no labels): scores, preference and gates."""
        mask = self._check(input_ids, attention_mask, history_ids, candidate_ids)
        z, gates = self._preference(input_ids, mask, history_ids)
        return L2RecOutput(scores=self.model.score(z, candidate_ids), preference=z, gates=gates)

    @torch.no_grad()
    def recommend(self, input_ids, attention_mask, history_ids, k: int = 10,
                  exclude_history: bool = True, exclude_ids: torch.Tensor | None = None,
                  return_preference: bool = False) -> tuple[torch.Tensor, ...]:
        """``model.recommend`` with the forward compiled: same arguments, same answer."""
        self.model._check_recommend_args(history_ids, k, exclude_history, exclude_ids, return_preference)
        z, _ = self.preference(input_ids, attention_mask, history_ids)
        scores, ids = self.model._top_k(z, history_ids, k, exclude_history, exclude_ids)
        return (scores, ids, z) if return_preference else (scores, ids)

    def warmup(self, batch_buckets: Sequence[int] | None = None,
               length_buckets: Sequence[int] | None = None) -> int:
        """Compile (and on CUDA capture) the given buckets now (default: all); returns how
        many shapes ran. Each runs twice: CUDA graph trees record on a shape's second call."""
        batches = _check_buckets("batch_buckets", batch_buckets or self.buckets.batch)
        lengths = _check_buckets("length_buckets", length_buckets or self.buckets.length)
        device = next(self.model.parameters()).device
        n = 0
        for rows in batches:
            for length in lengths:
                ids = torch.ones(rows, length, dtype=torch.long, device=device)
                mask = torch.ones(rows, length, dtype=torch.bool, device=device)
                hist = torch.ones(rows, 1, dtype=torch.long, device=device)
                for _ in range(2):
                    self.preference(ids, mask, hist)
                n += 1
        return n


def compile_for_serving(model, *, mode: str = "default", backend: str = "inductor",
                        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
                        length_buckets: Sequence[int] | None = None) -> CompiledRecommender:
    """``model`` (L2Rec or FusedL2Rec) with its forward compiled over shape buckets.

    mode: ``torch.compile``'s mode; ``"reduce-overhead"`` replays CUDA graphs on a GPU (on
    the CPU it compiles as "default"). backend: ``torch.compile``'s backend ("eager" traces
    without Inductor: fast to compile, for tests). batch_buckets: batch sizes the graphs
    run at (default 1, 2, 4, ..., 64). length_buckets: prompt lengths (default powers of two
    from 32, up to the backbone's ``max_position_embeddings``).
    """
    return CompiledRecommender(model, mode=mode, backend=backend, batch_buckets=batch_buckets,
                               length_buckets=length_buckets)
