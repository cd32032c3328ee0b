"""``L2RecCollator``: a list of ``Example``s -> the model's input tensors.

For each example (``l2rec_kernels.data.Example``: user, history, target, seen):

* ``input_ids``, ``attention_mask`` [B, T]: the prompt the server would build for that
  history (``prompt_builder``, e.g. ``TitlePromptBuilder``), left-padded with token 0 to the
  longest prompt of the batch (the model reads each prompt's last token);
* the prompt lists the last ``prompt_history`` items (default: ``max_history``);
* ``history_ids`` [B, max_history]: the last ``max_history`` history items, 0-padded on the
  right (the view encoders follow the padding mask, either side works);
* ``labels`` [B]: the target item ids (whole-catalogue cross-entropy);
* ``seen`` [B, S]: every item the user had before the target, 0-padded: evaluation
  excludes them from the ranking (the training loss ignores them);
* ``candidates`` [B, C], only when the examples carry them (``SampledExample``): the
  sampled protocol's candidate items, the target first.

It depends on nothing but its prompt builder, so a Trainer (any rank, any batch order)
gets the same tensors for the same examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ..models.inputs import model_inputs, padded_ids


class SampledExample(NamedTuple):
    """An example with the sampled protocol's candidates (the target first)."""

    example: object  # an Example
    candidates: list[int]


class L2RecCollator:
    """Examples -> ``{input_ids, attention_mask, history_ids, labels, seen[, candidates]}``."""

    def __init__(self, prompt_builder: Callable[[Sequence[int]], list[int]], max_history: int,
                 prompt_history: int | None = None) -> None:
        if not callable(prompt_builder):
            raise TypeError(f"prompt_builder must be callable (history -> token ids), got "
                            f"{type(prompt_builder).__name__}")
        for name, value in (("max_history", max_history), ("prompt_history", prompt_history)):
            if value is None and name == "prompt_history":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.prompt_builder, self.max_history = prompt_builder, max_history
        # The prompt may list fewer items than the view encoders read: a prompt's cost grows
        # with its length in every backbone layer, a history's only in the small SASRec.
        self.prompt_history = prompt_history or max_history

    def __call__(self, features: Sequence) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("the collator got an empty batch")
        sampled = [f.candidates for f in features if isinstance(f, SampledExample)]
        examples = [f.example if isinstance(f, SampledExample) else f for f in features]
        if sampled and len(sampled) != len(features):
            raise ValueError("a batch mixes examples with and without sampled candidates")
        prompts = []
        for ex in examples:
            tokens = self.prompt_builder(ex.history[-self.prompt_history:])
            if not tokens:
                raise ValueError(f"the prompt builder returned no tokens for user {ex.user}")
            prompts.append(tokens)
        batch = model_inputs(prompts, [ex.history for ex in examples], self.max_history)
        batch["labels"] = torch.tensor([ex.target for ex in examples], dtype=torch.long)
        batch["seen"] = padded_ids([ex.seen for ex in examples])
        if sampled:
            batch["candidates"] = torch.tensor(sampled, dtype=torch.long)
        return batch
