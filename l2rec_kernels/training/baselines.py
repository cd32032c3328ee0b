"""The reference rows of an evaluation table: most-popular and random, ranked under the same
protocol as the model (the user's history excluded, ties against the ranked item).

* ``popularity``: every user gets the items by their count in the training split (each
  user's items before their validation target, ``metrics.popularity_scores``), most
  frequent first. Many items share a
  count, and a tie counts against the target, so this is the baseline's honest score.
* ``random``: uniform random scores from a seeded generator (the same table every run).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..metrics import popularity_scores, ranks_from_scores, sampled_ranks

BASELINES = ("popularity", "random")
_SCORES_PER_CHUNK = 1 << 24  # users x items scored at once (64 MiB of float32)


def baseline_ranks(name: str, examples: Sequence, num_items: int, *, popularity: torch.Tensor | None = None,
                   candidates: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """Full-ranking ranks of ``examples``' targets under baseline ``name`` (int64 [U]); with
    ``candidates`` [U, C] (target first) a second column: the rank among the candidates."""
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {name!r}")
    if name == "popularity" and popularity is None:
        raise ValueError("the popularity baseline needs popularity scores")
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, _SCORES_PER_CHUNK // (num_items + 1))
    full, sampled = [], []
    for start in range(0, len(examples), chunk):
        part = examples[start:start + chunk]
        targets = torch.tensor([ex.target for ex in part], dtype=torch.long)
        if name == "popularity":
            scores = popularity.float().expand(len(part), -1)
        else:
            scores = torch.rand(len(part), num_items + 1, generator=generator)
        full.append(ranks_from_scores(scores, targets, [ex.seen for ex in part]))
        if candidates is not None:
            sampled.append(sampled_ranks(scores.gather(1, candidates[start:start + chunk])))
    ranks = torch.cat(full) if full else torch.zeros(0, dtype=torch.long)
    if candidates is not None:
        ranks = torch.stack([ranks, torch.cat(sampled) if sampled else ranks], dim=1)
    return ranks


def popularity_table(data) -> torch.Tensor:
    """Training-split item counts as scores [num_items + 1] (column 0 = -inf): each user's
    items before their validation target."""
    return popularity_scores(data.split("train"), data.num_items)
