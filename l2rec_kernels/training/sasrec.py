"""Stage 1 of the paper's two-stage recipe: train the behavioral view's SASRec alone.

L2Rec routes each user's experts on a *pretrained* sequential recommender that it keeps
frozen (docs/design.md section 1); a randomly initialised one routes on noise. Stage 1
trains our ``SASRecEncoder`` (with its item-ID table, which L2Rec's item scorer also reads)
as SASRec is trained (Kang & McAuley 2018), on the training split only:

* every position of each user's training sequence in one pass: the state after item t
  predicts item t + 1, scored against the whole catalogue (full softmax cross-entropy, as
  in RecBole's SASRec with ``loss_type=CE``), padding positions ignored;
* a user's training sequence ``s[0..n-3]`` (validation and test targets held out) is cut
  into windows of ``max_len`` inputs from its end, so the last window is exactly what the
  model reads at prediction time (the last ``max_len`` items) and no training position is
  dropped;
* evaluated after every epoch on the validation split (full ranking, history excluded,
  ties against the target: ``metrics.target_ranks``) and stopped early on NDCG@10, the
  best epoch's weights kept; a wall-clock budget (``TimeBudgetCallback``) may stop it first.

Hugging Face's ``Trainer`` runs the loop; this module says only what is SASRec's: the
windows, the loss, the evaluation. The trained encoder is saved as safetensors + JSON
(``save_sasrec`` / ``load_sasrec``) and is itself a recommender: ``sasrec_ranks`` ranks a
split's targets with it (the ``sasrec`` row of ``python -m l2rec_kernels.compare``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback

from .._compat import check_trainer_private_api
from ..metrics import ranking_metrics, target_ranks
from ..models.encoders import SASRecEncoder
from ..models.inputs import padded_ids

SASREC_CONFIG_NAME = "sasrec_config.json"
SASREC_WEIGHTS_NAME = "sasrec_weights.safetensors"


@dataclass(frozen=True)
class SASRecSpec:
    """The encoder's shape (must equal the L2Rec config's ``behavior_dim``, ``max_history``,
    ``sasrec_layers``, ``sasrec_heads`` for stage 2 to load it)."""

    num_items: int
    dim: int = 64
    max_len: int = 50
    layers: int = 2
    heads: int = 2
    dropout: float = 0.5
    ffn: int | None = None

    def build(self) -> SASRecEncoder:
        return SASRecEncoder(self.num_items, self.dim, self.max_len, self.layers, self.heads, self.dropout,
                             self.ffn)

    @classmethod
    def of_config(cls, config) -> SASRecSpec:
        """The spec an ``L2RecConfig``'s behavior encoder has."""
        return cls(config.num_items, config.behavior_dim, config.max_history, config.sasrec_layers,
                   config.sasrec_heads, config.sasrec_dropout, config.sasrec_ffn)


class Window(tuple):
    """One training window: (inputs, targets), item-id lists of equal length <= max_len."""

    __slots__ = ()


def training_windows(sequences: Sequence[Sequence[int]], max_len: int) -> list[Window]:
    """Every (input item, next item) pair of each user's training sequence, in windows of at
    most ``max_len`` inputs cut from the end (see the module docstring). A user with n
    items trains on targets ``s[1..n-3]`` (the same targets as L2Rec's training split)."""
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    windows = []
    for seq in sequences:
        end = len(seq) - 3  # inputs s[0..n-4]; their targets s[1..n-3]
        while end > 0:
            start = max(0, end - max_len)
            windows.append(Window((list(seq[start:end]), list(seq[start + 1:end + 1]))))
            end = start
    return windows


class SASRecCollator:
    """Windows -> ``{input_ids, target_ids}`` [B, L] (0-padded on the right); evaluation
    ``Example``s -> ``{history_ids, labels, seen}`` (the last ``max_len`` history items)."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def __call__(self, features: Sequence) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("the collator got an empty batch")
        if isinstance(features[0], Window):
            return {"input_ids": padded_ids([f[0] for f in features]),
                    "target_ids": padded_ids([f[1] for f in features])}
        return {"history_ids": padded_ids([f.history[-self.max_len:] for f in features]),
                "labels": torch.tensor([f.target for f in features], dtype=torch.long),
                "seen": padded_ids([f.seen for f in features])}


class SASRecModel(nn.Module):
    """The encoder with SASRec's training loss: ``forward(input_ids, target_ids)`` -> mean
    cross-entropy of every real position's next item over items 1..N."""

    def __init__(self, encoder: SASRecEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.encoder.states(input_ids)                        # [B, L, d]
        real = target_ids > 0
        logits = states[real] @ self.encoder.item_emb.weight[1:].T     # [P, N]: item 0 never a class
        return {"loss": F.cross_entropy(logits, target_ids[real] - 1)}


class SASRecTrainer(Trainer):
    """``Trainer`` for stage 1: the model's loss; evaluation ranks each validation target
    among all items with the user's history excluded (one int per user, no [U, N] matrix)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(inputs["input_ids"], inputs["target_ids"])
        return (out["loss"], out) if return_outputs else out["loss"]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        encoder = self.accelerator.unwrap_model(model).encoder
        with torch.no_grad():
            query = encoder(inputs["history_ids"])
            ranks = target_ranks(query, encoder.item_emb.weight, inputs["labels"], inputs["seen"])
        return None, ranks, inputs["labels"]


check_trainer_private_api(SASRecTrainer)


def _compute_metrics(prediction) -> dict[str, float]:
    ranks = torch.from_numpy(np.asarray(prediction.predictions).astype(np.int64).reshape(-1))
    return {k: float(v) for k, v in ranking_metrics(ranks, ks=(1, 5, 10, 20)).items()}


class TimeBudgetCallback(TrainerCallback):
    """Stops training once ``seconds`` of wall-clock time have passed since the training
    began, with a last evaluation (and save) so the best model is chosen on validation
    among everything trained. None or <= 0: no budget."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start: float | None = None
        self.stopped_by_budget = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds and self.seconds > 0 and time.perf_counter() - self.start >= self.seconds:
            control.should_training_stop = True
            control.should_evaluate = control.should_save = True
            self.stopped_by_budget = True
        return control


@dataclass
class SASRecResult:
    """What stage 1 did: epochs and steps run, seconds, the best validation metrics."""

    epochs: float
    steps: int
    seconds: float
    best_valid: dict
    stopped_by_budget: bool


# Stage 1's optimisation settings, the one home of their defaults (train_sasrec, the train
# CLI's --sasrec-* flags, and compare's sasrec row, which must be the same procedure).
STAGE1_DEFAULTS = {"epochs": 200.0, "batch_size": 32, "lr": 1e-3, "patience": 10}


def train_sasrec(data, spec: SASRecSpec, output_dir: str, *, epochs: float = STAGE1_DEFAULTS["epochs"],
                 batch_size: int = STAGE1_DEFAULTS["batch_size"], lr: float = STAGE1_DEFAULTS["lr"],
                 weight_decay: float = 0.0, patience: int = STAGE1_DEFAULTS["patience"],
                 budget_s: float | None = None, seed: int = 0, progress: bool = False,
                 say=print) -> tuple[SASRecEncoder, SASRecResult]:
    """Train a SASRec encoder of shape ``spec`` on ``data``'s training split (module
    docstring); returns the encoder with the best validation NDCG@10's weights (in eval
    mode) and what happened. Trainer's checkpoints go to ``output_dir/checkpoints``."""
    from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

    from .distributed import ddp_backend

    if spec.num_items != data.num_items:
        raise ValueError(f"spec.num_items ({spec.num_items}) != the data's {data.num_items}")
    set_seed(seed)
    encoder = spec.build()
    windows = training_windows(data.sequences, spec.max_len)
    valid = data.split("valid", max_history=spec.max_len)
    if not windows or len(valid) == 0:
        raise ValueError("stage 1 needs users with at least 4 items (training windows and a "
                         "validation target)")
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "checkpoints"), num_train_epochs=epochs,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=512, learning_rate=lr,
        weight_decay=weight_decay, lr_scheduler_type="constant", seed=seed, data_seed=seed,
        eval_strategy="epoch", save_strategy="epoch", save_total_limit=1, load_best_model_at_end=True,
        metric_for_best_model="NDCG@10", greater_is_better=True, logging_strategy="epoch",
        report_to="none", disable_tqdm=not progress, remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(), dataloader_pin_memory=torch.cuda.is_available(),
        ddp_backend=ddp_backend(), ddp_find_unused_parameters=False)
    budget = TimeBudgetCallback(budget_s)
    callbacks = [budget] + ([EarlyStoppingCallback(early_stopping_patience=patience)] if patience > 0 else [])
    trainer = SASRecTrainer(model=SASRecModel(encoder), args=args, data_collator=SASRecCollator(spec.max_len),
                            train_dataset=windows, eval_dataset=valid, compute_metrics=_compute_metrics,
                            callbacks=callbacks)
    say(f"stage 1 (SASRec): {len(windows)} training windows of <= {spec.max_len} items "
        f"({sum(len(w[0]) for w in windows)} positions), {len(valid)} validation users")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    state = trainer.state
    best = next((h for h in state.log_history if h.get("eval_NDCG@10") == state.best_metric), {})
    best_valid = {k[5:]: v for k, v in best.items()
                  if k.startswith("eval_") and ("@" in k or k == "eval_MRR")}
    result = SASRecResult(epochs=float(state.epoch or 0), steps=state.global_step, seconds=seconds,
                          best_valid=best_valid, stopped_by_budget=budget.stopped_by_budget)
    say(f"stage 1: {result.steps} steps ({result.epochs:.0f} epochs) in {seconds:.1f} s; best validation "
        f"NDCG@10 {state.best_metric or 0:.4f}" + (" (stopped by the time budget)" if result.stopped_by_budget
                                                   else ""))
    return encoder.eval(), result


def save_sasrec(encoder: SASRecEncoder, spec: SASRecSpec, path: str,
                result: SASRecResult | None = None) -> None:
    """``path/sasrec_config.json`` (the spec and, when given, the training record) and
    ``path/sasrec_weights.safetensors``."""
    os.makedirs(path, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()},
              os.path.join(path, SASREC_WEIGHTS_NAME), metadata={"format": "pt"})
    meta = {"spec": asdict(spec), "training": asdict(result) if result is not None else None}
    with open(os.path.join(path, SASREC_CONFIG_NAME), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def load_sasrec(path: str) -> tuple[SASRecEncoder, SASRecSpec]:
    """The encoder ``save_sasrec`` wrote (safetensors only), in eval mode, and its spec."""
    cfg, weights = os.path.join(path, SASREC_CONFIG_NAME), os.path.join(path, SASREC_WEIGHTS_NAME)
    for p in (cfg, weights):
        if not os.path.isfile(p):
            raise ValueError(f"{p} not found: {path} is not a stage-1 SASRec checkpoint "
                             "(python -m l2rec_kernels.train writes one into OUT/sasrec)")
    with open(cfg) as f:
        spec = SASRecSpec(**json.load(f)["spec"])
    encoder = spec.build()
    encoder.load_state_dict(load_file(weights))
    return encoder.eval(), spec


def load_into_l2rec(model, encoder: SASRecEncoder, spec: SASRecSpec) -> None:
    """Copy a stage-1 encoder into an L2Rec model's behavior encoder (shapes checked)."""
    want = SASRecSpec.of_config(model.config)
    for field in ("num_items", "dim", "max_len", "layers", "heads", "ffn"):
        if getattr(spec, field) != getattr(want, field):
            raise ValueError(f"the stage-1 SASRec has {field}={getattr(spec, field)} but the L2Rec "
                             f"config needs {getattr(want, field)}")
    with torch.no_grad():
        model.behavior_encoder.load_state_dict(encoder.state_dict())


@torch.no_grad()
def sasrec_ranks(encoder: SASRecEncoder, examples, max_len: int, batch_size: int = 512) -> torch.Tensor:
    """Full-ranking ranks of ``examples``' targets (history excluded, ties against the
    target) with the encoder's last state as the query and its item table as the items."""
    encoder = encoder.eval()
    collate = SASRecCollator(max_len)
    device = encoder.item_emb.weight.device
    out = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start:start + batch_size])
        query = encoder(batch["history_ids"].to(device))
        out.append(target_ranks(query, encoder.item_emb.weight, batch["labels"].to(device),
                                batch["seen"].to(device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
