"""``RecommenderService``: the framework-agnostic serving core.

It owns one model (built once), validates requests (``validation``), builds prompts
(``prompts``) and answers many users with one forward (``recommend_batch``). The Ray Serve
deployment and the FastAPI example are thin HTTP layers over it; any other Python server
can call it the same way:

    service = build_service(ServiceSpec())                # the built-in tiny model
    request = service.parse(b'{"history": [3, 17, 42], "k": 5}')   # RequestError if bad
    service.recommend_batch([request])                    # [{"items": [...], "scores": [...]}]

``recommend_batch`` is thread-safe (the model's routing state is per thread), so a thread
pool may call it concurrently; batching several requests per call is what makes it fast.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_HISTORY_ITEMS,
    DEFAULT_MAX_K,
    RequestLimits,
    check_positive_int,
)
from .validation import parse_request, validate_request

if TYPE_CHECKING:
    from .schema import RecommendRequest

PromptBuilder = Callable[[Sequence[int]], list[int]]


def max_prompt_tokens(model) -> int:
    """The longest prompt the backbone takes (its position table), capped at 8192 tokens."""
    return min(int(getattr(model.backbone.config, "max_position_embeddings", 2048) or 2048), 8192)


_backbone_prompt_limit = max_prompt_tokens  # (the name, for use where a parameter shadows it)


class BatchStats:
    """Counts of forwards and the requests they carried, so a load test can read the mean
    batch size that dynamic batching reached (thread-safe: batches run in worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sizes: Counter[int] = Counter()
        self._forward_s = 0.0

    def record(self, size: int, seconds: float) -> None:
        with self._lock:
            self._sizes[size] += 1
            self._forward_s += seconds

    def snapshot(self) -> dict:
        with self._lock:
            batches = sum(self._sizes.values())
            requests = sum(s * n for s, n in self._sizes.items())
            return {
                "batches": batches,
                "requests": requests,
                "mean_batch_size": requests / batches if batches else 0.0,
                "max_batch_size": max(self._sizes, default=0),
                "batch_size_counts": {str(s): n for s, n in sorted(self._sizes.items())},
                "forward_seconds": round(self._forward_s, 4),
            }


class RecommenderService:
    """One model behind a validator and a batcher-friendly ``recommend_batch``.

    ``prompt_builder`` maps a (most recent ``max_history``) history to prompt token ids;
    None means requests must carry ``prompt_ids``. The keyword limits bound what one request
    may carry (``limits``); ``max_prompt_tokens`` None means the backbone's own limit
    (``max_prompt_tokens(model)``), and a larger value is refused, since the backbone could
    not read such a prompt.
    """

    def __init__(self, model, prompt_builder: PromptBuilder | None = None, *, name: str = "l2rec",
                 max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_k: int = DEFAULT_MAX_K,
                 max_prompt_tokens: int | None = None, compile_mode: str | None = None) -> None:
        backbone_limit = _backbone_prompt_limit(model)
        if max_prompt_tokens is None:
            max_prompt_tokens = backbone_limit
        elif check_positive_int("max_prompt_tokens", max_prompt_tokens) > backbone_limit:
            raise ValueError(f"max_prompt_tokens must be at most {backbone_limit} (what the backbone "
                             f"reads), got {max_prompt_tokens}")
        cfg = model.config
        self.limits = RequestLimits(
            num_items=cfg.num_items, max_history=cfg.max_history,
            vocab_size=int(model.backbone.config.vocab_size), max_prompt_tokens=max_prompt_tokens,
            requires_prompt_ids=prompt_builder is None, max_history_items=max_history_items,
            max_body_bytes=max_body_bytes, max_k=max_k)
        self.model = model.eval()
        self.prompt_builder = prompt_builder
        self.name = name
        self.device = next(model.parameters()).device
        self.stats = BatchStats()
        # compile_mode: the forward runs as compiled graphs over (batch, length) buckets
        # (l2rec_kernels.compile_for_serving; "reduce-overhead" replays CUDA graphs on a GPU),
        # the prompt-length buckets going up to the longest prompt this service takes.
        self.recommender = model
        if compile_mode is not None:
            from l2rec_kernels.models.compiled import compile_for_serving, default_length_buckets

            self.recommender = compile_for_serving(
                model, mode=compile_mode, length_buckets=default_length_buckets(max_prompt_tokens))
        self.compile_mode = compile_mode

    # ----------------------------------------------------------------- validation
    def parse(self, body: bytes | str) -> RecommendRequest:
        """Raw JSON body -> request; raises ``RequestError`` (status 400/413/422) if bad."""
        return parse_request(body, self.limits)

    def validate(self, payload: dict) -> RecommendRequest:
        """Already-decoded JSON (a dict) -> request; raises ``RequestError`` if bad."""
        return validate_request(payload, self.limits)

    # ----------------------------------------------------------------- inference
    def _prompt(self, request: RecommendRequest) -> list[int]:
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        return self.prompt_builder(request.model_history(self.limits.max_history))

    def _inputs(self, requests: Sequence[RecommendRequest]) -> dict[str, torch.Tensor]:
        """Left-padded prompts and right-padded histories for the whole batch, on the model's
        device. (The model's result for a user does not depend on the padding.)"""
        from l2rec_kernels.models.inputs import model_inputs

        width = self.limits.max_history
        inputs = model_inputs([self._prompt(r) for r in requests],
                              [r.model_history(width) for r in requests], width)
        return {name: t.to(self.device) for name, t in inputs.items()}

    def _exclusions(self, requests: Sequence[RecommendRequest]) -> torch.Tensor:
        """[B, X] item ids to exclude, -1 padded: every item of every excluding user's whole
        history, not only the most recent ``max_history`` the encoders read."""
        seen = [sorted(set(r.history)) if r.exclude_history else [] for r in requests]
        out = torch.full((len(requests), max(1, max(map(len, seen)))), -1, dtype=torch.long)
        for i, items in enumerate(seen):
            out[i, : len(items)] = torch.tensor(items, dtype=torch.long)
        return out.to(self.device)

    def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[dict]:
        """One forward for all ``requests`` -> one ``{"items", "scores"}`` per request.

        Requests may mix ``k`` and ``exclude_history``: one ``model.recommend`` at the
        largest k with each user's own exclusions, sliced per user (the top-k is sorted, so
        the slice is that user's own top-k). With ``FusedL2Rec`` that is the cached item
        table and ``topk_items``: no [B, N] score matrix.
        """
        if not requests:
            return []
        start = time.perf_counter()
        inputs = self._inputs(requests)
        with torch.inference_mode():
            values, ids = self.recommender.recommend(
                **inputs, k=max(r.k for r in requests), exclude_history=False,
                exclude_ids=self._exclusions(requests))
            values, ids = values.float().cpu().tolist(), ids.cpu().tolist()
        self.stats.record(len(requests), time.perf_counter() - start)
        return [{"items": ids[i][: r.k], "scores": values[i][: r.k]} for i, r in enumerate(requests)]

    def recommend_batch_isolated(self, requests: Sequence[RecommendRequest]) -> list[dict | Exception]:
        """``recommend_batch``, but a failure is confined to the request that caused it: if
        the batch fails, each request is retried alone and gets its result or its exception.
        (Validation makes this rare; it guards against the unforeseen, e.g. out of memory.)"""
        try:
            return list(self.recommend_batch(requests))
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
        out: list[dict | Exception] = []
        for r in requests:
            try:
                out.append(self.recommend_batch([r])[0])
            except Exception as exc:  # reported to that one client as a 500
                out.append(exc)
        return out

    def recommend(self, request: RecommendRequest) -> dict:
        """A single request (a batch of one)."""
        return self.recommend_batch([request])[0]

    def warmup(self) -> int:
        """With ``compile_mode``: compile (and on a GPU capture) every bucket now, so no
        request waits for a compile; returns the number of shapes run (0 without)."""
        return 0 if self.compile_mode is None else self.recommender.warmup()

    # ----------------------------------------------------------------- introspection
    def info(self) -> dict:
        """What ``GET /healthz`` reports: the model, the request limits and the batch statistics."""
        backend = getattr(self.model, "backend", None)
        return {"status": "ok", "model": self.name, "device": str(self.device), "backend": backend,
                "num_items": self.limits.num_items, "max_history": self.limits.max_history,
                "vocab_size": self.limits.vocab_size,
                "builds_prompts": self.prompt_builder is not None, "compile_mode": self.compile_mode,
                "limits": self.limits.to_json(),
                "stats": self.stats.snapshot()}
