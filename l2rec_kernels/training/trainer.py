"""``L2RecTrainer``: Hugging Face's ``Trainer`` for an ``L2Rec``/``FusedL2Rec`` model.

Trainer (with accelerate underneath) does the loop, DDP, mixed precision, gradient
accumulation, logging, checkpoints and resume; this subclass says only what is L2Rec's:

* ``compute_loss``: the model's own loss (``L2RecOutput.loss``: whole-catalogue
  cross-entropy of the target item plus the weighted auxiliary losses); the auxiliary
  losses are also logged, unweighted, as ``aux_<name>`` (this process's mean since the
  last log).
* ``prediction_step``: one forward per batch, then the target's full-ranking rank among
  all items with the user's history excluded (``metrics.target_ranks``, chunked over
  items), so evaluation only ever gathers one int per user, never a [users, items] matrix.
  With sampled candidates in the batch (``collator.SampledExample``) also the target's
  rank among them. ``eval_loss`` is the whole-catalogue cross-entropy (no auxiliary
  losses, history not excluded), from the same chunks.
* ``compute_metrics`` (``ranking_compute_metrics``): HR@K, NDCG@K (K = 1, 5, 10, 20) and
  MRR from those ranks; ``sampled_*`` for the sampled protocol.
* checkpoints in the package's own format (``save_pretrained``: safetensors + JSON +
  backbone digest, without the frozen backbone), written by the main process only; resume
  and the best-model reload load them back into the same model in place.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers import Trainer

from .._compat import check_trainer_private_api
from ..metrics import ranking_metrics, sampled_ranks, target_ranks
from .checkpoint import load_weights_into, write_run_info

MODEL_INPUTS = ("input_ids", "attention_mask", "history_ids")
METRIC_KS = (1, 5, 10, 20)
TRAINING_ARGS_NAME = "training_args.json"  # instead of Trainer's pickled training_args.bin


def catalogue_query(model, preference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query [B, d], item table [N + 1, d]) in float32 with ``scores = query @ table.T``:
    the model's scores over the catalogue, as ``recommend`` computes them."""
    table = model.item_table() if hasattr(model, "item_table") else model.item_embeddings()
    return preference.float() / model.scorer.temperature, table.float()


def catalogue_cross_entropy(query: torch.Tensor, table: torch.Tensor, targets: torch.Tensor,
                            item_chunk: int = 65536) -> torch.Tensor:
    """Mean cross-entropy of ``targets`` over items 1..N (scores ``query @ table.T``),
    item by item chunk: the same value as the training loss, without a [B, N] matrix."""
    lse = torch.full((query.shape[0],), float("-inf"), device=query.device)
    for start in range(1, table.shape[0], item_chunk):
        scores = query @ table[start:start + item_chunk].T
        lse = torch.logaddexp(lse, torch.logsumexp(scores, dim=1))
    target = (query * table[targets]).sum(1)
    return (lse - target).mean()


def ranking_compute_metrics(prediction) -> dict[str, float]:
    """Trainer's ``compute_metrics``: predictions are the ranks ``prediction_step`` made
    (column 0 full ranking, column 1 sampled when present)."""
    ranks = np.asarray(prediction.predictions)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    out = ranking_metrics(torch.from_numpy(ranks[:, 0].astype(np.int64)), ks=METRIC_KS)
    if ranks.shape[1] > 1:
        sampled = ranking_metrics(torch.from_numpy(ranks[:, 1].astype(np.int64)), ks=(1, 5, 10))
        out.update({f"sampled_{k}": v for k, v in sampled.items()})
    return {k: float(v) for k, v in out.items()}


class L2RecTrainer(Trainer):
    """``Trainer`` for L2Rec models (see the module docstring). ``run_info``: the training
    record written next to every checkpoint's weights (``checkpoint.RUN_INFO_NAME``)."""

    def __init__(self, *args, run_info: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("L2RecTrainer supports single-process and DDP training; DeepSpeed and "
                             "FSDP shard the frozen backbone and are not supported")
        self.run_info = run_info
        self._aux_sums: dict[str, torch.Tensor] = {}
        self._aux_count = 0

    # ------------------------------------------------------------------ training
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(*(inputs[k] for k in MODEL_INPUTS), labels=inputs["labels"])
        if out.aux_losses and model.training:
            for name, value in out.aux_losses.items():  # tensors: read on the host only when logged
                self._aux_sums[name] = self._aux_sums.get(name, 0.0) + value.detach()
            self._aux_count += 1
        return (out.loss, out) if return_outputs else out.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._aux_count:
            logs.update({f"aux_{k}": round(float(v) / self._aux_count, 6) for k, v in self._aux_sums.items()})
            self._aux_sums, self._aux_count = {}, 0
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        core = self.accelerator.unwrap_model(model)
        targets, candidates = inputs["labels"], inputs.get("candidates")
        with torch.no_grad(), self.compute_loss_context_manager():
            # Candidates [B, 1] (the target) when not sampling: the forward then scores one
            # item per user; the catalogue is ranked below from the preference.
            out = model(*(inputs[k] for k in MODEL_INPUTS),
                        candidate_ids=candidates if candidates is not None else targets[:, None])
            query, table = catalogue_query(core, out.preference)
            loss = catalogue_cross_entropy(query, table, targets).detach()
            if prediction_loss_only:
                return loss, None, None
            ranks = target_ranks(query, table, targets, inputs["seen"])
            preds = ranks[:, None]
            if candidates is not None:
                preds = torch.stack([ranks, sampled_ranks(out.scores.float())], dim=1)
        return loss, preds, targets

    # ------------------------------------------------------------------ checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:  # the main process writes; the others have nothing to add
            return
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir)
        with open(os.path.join(output_dir, TRAINING_ARGS_NAME), "w") as f:
            f.write(self.args.to_json_string())
        if self.run_info is not None:
            write_run_info(output_dir, self.run_info)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        load_weights_into(self.accelerator.unwrap_model(model if model is not None else self.model),
                          resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_weights_into(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)


check_trainer_private_api(L2RecTrainer)

