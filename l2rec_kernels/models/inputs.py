"""Forward inputs and outputs shared by ``L2Rec`` and ``FusedL2Rec``.

``check_forward_inputs`` is the one place bad input is caught for both models: every
problem is a ``TypeError``/``ValueError`` naming the argument. Range checks read values
(a host sync on GPU); models expose ``validate_inputs`` to turn them off for a trusted,
latency-bound caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._validation import being_traced, check_int, check_range, check_shape, check_tensor


@dataclass
class L2RecOutput:
    """What a forward returns.

    scores      [B, C] over candidate_ids, or [B, num_items + 1] over the catalogue
                (column 0 is the padding item and scores -inf)
    preference  [B, pref_dim]: the fused user preference z
    gates       [2, B, E]: view 0 behavioral, view 1 semantic
    loss        when labels are given: cross-entropy over ``scores`` plus each auxiliary
                loss times its weight (``L2RecConfig.load_balance_weight``,
                ``contrastive_weight``); else None
    aux_losses  when labels are given: the auxiliary losses with a non-zero weight,
                unweighted, by name ("load_balance", "contrastive"); else None
    """

    scores: torch.Tensor
    preference: torch.Tensor
    gates: torch.Tensor
    loss: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] | None = None


def check_forward_inputs(input_ids, attention_mask, history_ids, candidate_ids, labels, *,
                         vocab_size: int, num_items: int, max_history: int,
                         check_values: bool = True) -> torch.Tensor:
    """Validate a forward's arguments; returns the attention mask as a bool tensor."""
    check_int("input_ids", input_ids, ndim=2)
    batch, seq = input_ids.shape
    if seq == 0:
        raise ValueError("input_ids must have at least one token per row, got shape "
                         f"{list(input_ids.shape)}")
    device = input_ids.device
    check_tensor("attention_mask", attention_mask, ndim=2, device=device)
    if attention_mask.dtype.is_floating_point or attention_mask.is_complex():
        raise TypeError(f"attention_mask must be a bool or integer tensor, got {attention_mask.dtype}")
    check_shape("attention_mask", attention_mask, (batch, seq))
    check_int("history_ids", history_ids, ndim=2, device=device)
    if history_ids.shape[0] != batch:
        raise ValueError(f"history_ids has batch size {history_ids.shape[0]} but input_ids has {batch}")
    if history_ids.shape[1] > max_history:
        raise ValueError(f"history_ids has {history_ids.shape[1]} columns but the model's "
                         f"max_history is {max_history}")
    if candidate_ids is not None:
        check_int("candidate_ids", candidate_ids, device=device)
        if candidate_ids.dim() == 2 and candidate_ids.shape[0] != batch:
            raise ValueError(f"candidate_ids has batch size {candidate_ids.shape[0]} but "
                             f"input_ids has {batch}")
        if candidate_ids.dim() not in (1, 2) or candidate_ids.shape[-1] == 0:
            raise ValueError("candidate_ids must have shape [C] or [B, C] with C >= 1, got "
                             f"{list(candidate_ids.shape)}")
    if labels is not None:
        check_int("labels", labels, ndim=1, device=device)
        check_shape("labels", labels, (batch,))
    mask = attention_mask.bool()
    if check_values:  # (eager only: validated_forward_inputs handles a compiled forward)
        _check_values(input_ids, attention_mask, mask, history_ids, candidate_ids, labels,
                      vocab_size=vocab_size, num_items=num_items)
    return mask


def _check_values(input_ids, attention_mask, mask, history_ids, candidate_ids, labels, *,
                  vocab_size: int, num_items: int) -> None:
    """The checks of ``check_forward_inputs`` that read values (a host sync on a GPU)."""
    if attention_mask.dtype != torch.bool:
        check_range("attention_mask", attention_mask, 0, 1)
    if mask.shape[0] and not bool(mask.any(-1).all()):
        raise ValueError("attention_mask has a row with no attended token; every prompt "
                         "needs at least one")
    check_range("input_ids", input_ids, 0, vocab_size - 1)
    check_range("history_ids", history_ids, 0, num_items)
    if candidate_ids is not None:
        check_range("candidate_ids", candidate_ids, 1, num_items)
    if labels is not None:
        if candidate_ids is None:
            check_range("labels", labels, 1, num_items)
        else:
            check_range("labels", labels, 0, candidate_ids.shape[-1] - 1)


def validated_forward_inputs(input_ids, attention_mask, history_ids, candidate_ids, labels, *,
                             vocab_size: int, num_items: int, max_history: int,
                             check_values: bool = True) -> tuple:
    """``check_forward_inputs``, returning (mask, input_ids, history_ids, candidate_ids,
    labels): the tensors a forward must use from here on.

    In eager mode they are the arguments themselves. While torch.compile traces, reading
    values would be a data-dependent guard (or a graph break), so the value checks are one
    opaque op in the graph (``torch.ops.l2rec.check_forward_values``): every call of the
    compiled graph runs them and raises the same ValueError as eager. The tensors returned
    then depend on that op (each is the argument plus the op's zero), so the compiler cannot
    run anything that reads them (an embedding lookup, say) before the checks.
    """
    if not (check_values and being_traced(input_ids)):
        mask = check_forward_inputs(input_ids, attention_mask, history_ids, candidate_ids, labels,
                                    vocab_size=vocab_size, num_items=num_items,
                                    max_history=max_history, check_values=check_values)
        return mask, input_ids, history_ids, candidate_ids, labels
    check_forward_inputs(input_ids, attention_mask, history_ids, candidate_ids, labels,
                         vocab_size=vocab_size, num_items=num_items, max_history=max_history,
                         check_values=False)  # types and shapes: free, checked while tracing
    mask, zero = check_forward_values(input_ids, attention_mask, history_ids, candidate_ids,
                                      labels, vocab_size, num_items)

    def after_checks(t):
        return None if t is None else t + zero.to(t.dtype)

    return (mask, after_checks(input_ids), after_checks(history_ids),
            after_checks(candidate_ids), after_checks(labels))


@torch.library.custom_op("l2rec::check_forward_values", mutates_args=())
def check_forward_values(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         history_ids: torch.Tensor, candidate_ids: torch.Tensor | None,
                         labels: torch.Tensor | None, vocab_size: int,
                         num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.l2rec.check_forward_values``: the value checks of ``check_forward_inputs``
    as one op (what a compiled forward runs). Returns the attention mask as a new bool
    tensor and a zero (int64 scalar) for ``validated_forward_inputs`` to tie inputs to."""
    mask = attention_mask.to(torch.bool, copy=True)  # an op's output must not alias its input
    _check_values(input_ids, attention_mask, mask, history_ids, candidate_ids, labels,
                  vocab_size=vocab_size, num_items=num_items)
    return mask, torch.zeros((), dtype=torch.int64, device=input_ids.device)


@check_forward_values.register_fake
def _check_forward_values_fake(input_ids, attention_mask, history_ids, candidate_ids, labels,
                               vocab_size, num_items):
    return (torch.empty_like(attention_mask, dtype=torch.bool),
            torch.empty((), dtype=torch.int64, device=input_ids.device))


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Positions follow the attention mask, so a prompt's result ignores its padding side."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def pad_rows(rows: Sequence[Sequence[int]], side: str = "right") -> dict[str, torch.Tensor]:
    """Token rows -> padded input_ids and attention_mask ([B, max_len] int64)."""
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


def padded_ids(rows: Sequence[Sequence[int]], width: int | None = None, fill: int = 0) -> torch.Tensor:
    """Id rows -> [len(rows), W] int64, each row at the start and ``fill`` after it, where W
    is the longest row, at least ``width`` and at least 1 (0 pads item histories, -1 item
    exclusions)."""
    width = max(width or 0, max((len(r) for r in rows), default=0), 1)
    out = torch.full((len(rows), width), fill, dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


def model_inputs(prompts: Sequence[Sequence[int]], histories: Sequence[Sequence[int]],
                 max_history: int) -> dict[str, torch.Tensor]:
    """A forward's inputs for a batch of users, as training, serving and batch scoring build
    them: the prompts left-padded (``input_ids``, ``attention_mask``) and each history's last
    ``max_history`` items, padded on the right to ``max_history`` (``history_ids``). A
    user's result does not depend on either padding."""
    batch = pad_rows(prompts, side="left")
    batch["history_ids"] = padded_ids([list(h)[-max_history:] for h in histories], max_history)
    return batch
