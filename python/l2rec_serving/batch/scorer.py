"""``UserScorer``: the model actor of a batch job (a callable class for ``map_batches``).

Each actor loads the model once (``FusedL2Rec`` on the device Ray gives it, with that
device's fast backend: ``backend="auto"``), then scores one batch of raw input rows per
call: it checks every row (``rows.check_row``), builds the prompts of the good ones, sorts
them by prompt length and runs them in forwards of ``batch_size`` users (so a forward pads
only to the longest of similar prompts), and returns every row, scored or rejected, in one
table (``output.call_table``).

A user's answer is ``model.recommend`` for that user: the prompt left-padded, the most
recent ``max_history`` items for the view encoders, and (``exclude_history``) every item of
the whole history excluded, as the service does. A user with fewer than k items left after
the exclusions gets all of them (the padding slots, id -1, are not written).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pyarrow as pa
import torch

from ..loading import ServiceSpec
from . import rows as rowlib
from .options import BatchOptions
from .output import call_schema, call_table


def load_model(spec: ServiceSpec):
    """(model, history -> prompt tokens or None, prompt text -> tokens) for ``spec``: the
    built-in model (``loading.build_builtin_model``: the tiny one or a named shape's) or a
    checkpoint on its backbone (titles -> ``TitlePromptBuilder``; text -> the backbone's
    tokenizer). Prompts keep their last ``max_prompt_tokens`` tokens, as the service's do."""
    from ..loading import build_builtin_model, load_checkpoint_model, prompt_limit
    from ..prompts import DEFAULT_TEMPLATE, TitlePromptBuilder, load_titles

    device = spec.resolved_device()
    dtype = spec.resolved_dtype(device)
    if spec.checkpoint is None:
        model, builder, tokenize, _ = build_builtin_model(spec, device, dtype)
        return model, builder, tokenize
    model, tokenizer = load_checkpoint_model(spec.checkpoint, spec.backbone, device, dtype, spec.backend,
                                             check_backbone_weights=spec.check_backbone_weights)
    limit = prompt_limit(spec, model)
    if tokenizer is None:
        raise ValueError(f"backbone {spec.backbone} has no tokenizer files: batch scoring builds prompts "
                         "from titles or prompt text, which needs the tokenizer")
    builder = None
    if spec.titles is not None:
        builder = TitlePromptBuilder(load_titles(spec.titles, model.config.num_items), tokenizer, limit,
                                     spec.prompt_template or DEFAULT_TEMPLATE)
    return model, builder, lambda text: list(tokenizer(text)["input_ids"])[-limit:]


def model_inputs(histories: Sequence[list[int]], prompts: Sequence[list[int]], max_history: int,
                 exclude_history: bool, device) -> dict[str, torch.Tensor]:
    """``recommend``'s tensors for some users: left-padded prompts, the last ``max_history``
    items right-padded, and (``exclude_history``) every distinct history item, -1 padded."""
    from l2rec_kernels.models.inputs import model_inputs as forward_inputs
    from l2rec_kernels.models.inputs import padded_ids

    inputs = forward_inputs(prompts, histories, max_history)
    if exclude_history:
        inputs["exclude_ids"] = padded_ids([sorted(set(h)) for h in histories], fill=-1)
    return {name: t.to(device) for name, t in inputs.items()}


def recommend(model, inputs: dict[str, torch.Tensor], k: int, preference: bool):
    """(scores [B, k], ids [B, k], preference [B, d] or None) on the CPU, as float32/int64
    numpy arrays; ``preference``: z from the same ``model.recommend`` call."""
    exclude = inputs.get("exclude_ids")
    with torch.inference_mode():
        out = model.recommend(inputs["input_ids"], inputs["attention_mask"], inputs["history_ids"],
                              k=k, exclude_history=False, exclude_ids=exclude,
                              return_preference=preference)
        scores, ids = out[0], out[1]
        z = out[2].float().cpu().numpy() if preference else None
        return scores.float().cpu().numpy(), ids.cpu().numpy(), z


def _rejected(row: rowlib.CheckedRow) -> tuple[str | None, str, str, str]:
    """(user_id as text, kind, reason, row JSON) of a rejected row."""
    uid = row.raw.values.get("user_id") if row.raw.values is not None else None
    return (None if uid is None else str(uid), row.problems[0].kind,
            "; ".join(p.message for p in row.problems), row.raw.as_json())


class UserScorer:
    """The callable class of the job's ``map_batches``: one model per actor."""

    def __init__(self, spec: ServiceSpec, options: BatchOptions, fmt: str, duplicates: dict[str, int],
                 uid_type: pa.DataType) -> None:
        torch.set_num_threads(options.threads)  # actors x threads = the cores the job was given
        self.options, self.fmt, self.duplicates = options, fmt, duplicates
        self.model, self.builder, self.tokenize = load_model(spec)
        self.model.eval()
        self.device = next(self.model.parameters()).device
        self.num_items = self.model.config.num_items
        self.max_history = self.model.config.max_history
        self.schema = call_schema(uid_type, options.preference)
        self.forward_s = 0.0  # time in the model (the benchmark reads it)

    def _prompt(self, row: rowlib.CheckedRow) -> list[int]:
        if row.prompt is not None:
            return self.tokenize(row.prompt)
        return self.builder(row.history[-self.max_history:])

    def __call__(self, batch: pa.Table) -> pa.Table:
        checked = [rowlib.check_row(raw, num_items=self.num_items,
                                    max_history_items=self.options.max_history_items,
                                    duplicates=self.duplicates, can_build_prompts=self.builder is not None)
                   for raw in rowlib.raw_rows(batch, self.fmt)]
        todo, prompts = [], []
        for i, row in enumerate(checked):
            if row.problems:
                continue
            try:
                tokens = self._prompt(row)
            except ValueError as exc:  # e.g. a word the tiny model's tokenizer does not know
                row.reject("malformed_prompt", f"the prompt cannot be tokenised: {exc}")
                continue
            if not tokens:
                row.reject("malformed_prompt", "the prompt has no tokens")
                continue
            todo.append(i)
            prompts.append(tokens)
        n = len(checked)
        items: list = [None] * n
        scores: list = [None] * n
        prefs: list | None = [None] * n if self.options.preference else None
        self._score([checked[i].history for i in todo], prompts, todo, items, scores, prefs)
        rejected = [_rejected(row) if row.problems else None for row in checked]
        return call_table(self.schema, [row.user_id for row in checked], items, scores, prefs, rejected)

    def _score(self, histories, prompts, where, items, scores, prefs) -> None:
        """Run the users in forwards of ``batch_size``, shortest prompts first, and put each
        user's answer at its row (``where``)."""
        opts = self.options
        order = sorted(range(len(prompts)), key=lambda j: len(prompts[j]))  # (stable: ties keep row order)
        for start in range(0, len(order), opts.batch_size):
            chunk = order[start:start + opts.batch_size]
            inputs = model_inputs([histories[j] for j in chunk], [prompts[j] for j in chunk],
                                  self.max_history, opts.exclude_history, self.device)
            t0 = time.perf_counter()
            s, ids, z = recommend(self.model, inputs, opts.k, opts.preference)
            self.forward_s += time.perf_counter() - t0
            for r, j in enumerate(chunk):
                keep = ids[r] >= 0  # slots past the items left after exclusions: not written
                items[where[j]], scores[where[j]] = ids[r][keep], s[r][keep]
                if prefs is not None:
                    prefs[where[j]] = z[r]
