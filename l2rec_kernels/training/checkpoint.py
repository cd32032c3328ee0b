"""What a trained checkpoint directory holds beyond the model, and loading weights into a
model that already exists (Trainer's resume and best-model reload).

A checkpoint written by ``python -m l2rec_kernels.train --out CKPT``::

    CKPT/l2rec_config.json          the model: L2RecConfig, backbone shape and weight digest
    CKPT/l2rec_weights.safetensors  L2Rec's own tensors (no backbone)
    CKPT/l2rec_training.json        how it was trained (RUN_INFO_NAME, below)
    CKPT/titles.json                item titles, item i at index i - 1 (the server's --titles)
    CKPT/backbone/                  with --backbone tiny: the tiny backbone + tokenizer
    CKPT/checkpoints/checkpoint-N/  Trainer's checkpoints: the model files above plus the
                                    optimizer, scheduler, RNG and trainer state for resuming

``l2rec_training.json`` records the data spec and its settings (so evaluation rebuilds the
same item ids and splits), the prompt template and length, the preset and the backbone:
``{"kind": "tiny" | "dir", "path": ...}`` with a tiny backbone's path relative to the
directory holding the file (so the tree can move) and a backbone directory's absolute.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from ..models.base import L2RecBase, read_checkpoint
from ..models.config import L2RecConfig
from ..models.digest import backbone_digest_mismatches

RUN_INFO_NAME = "l2rec_training.json"
TITLES_NAME = "titles.json"
RUN_INFO_VERSION = 1


def run_info_for(info: dict, directory: str | os.PathLike) -> dict:
    """``info`` (backbone path absolute) as written into ``directory``: a tiny backbone's
    path relative to it."""
    info = json.loads(json.dumps(info))  # a deep copy of plain JSON data
    backbone = info.get("backbone")
    if backbone and backbone.get("kind") == "tiny":
        backbone["path"] = os.path.relpath(backbone["path"], os.fspath(directory))
    return info


def write_run_info(directory: str | os.PathLike, info: dict) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, RUN_INFO_NAME), "w") as f:
        json.dump({"version": RUN_INFO_VERSION, **run_info_for(info, directory)}, f, indent=2)
        f.write("\n")


def read_run_info(directory: str | os.PathLike) -> dict | None:
    """The training record of a checkpoint, or None when it has none (a model saved by
    ``save_pretrained`` elsewhere)."""
    path = os.path.join(os.fspath(directory), RUN_INFO_NAME)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        info = json.load(f)
    if info.get("version") != RUN_INFO_VERSION:
        raise ValueError(f"{path}: unsupported version {info.get('version')!r} "
                         f"(this package reads {RUN_INFO_VERSION})")
    return info


def write_titles(directory: str | os.PathLike, titles: list[str]) -> None:
    with open(os.path.join(directory, TITLES_NAME), "w", encoding="utf-8") as f:
        json.dump(titles, f, ensure_ascii=False)
        f.write("\n")


def load_weights_into(model: L2RecBase, directory: str | os.PathLike) -> None:
    """Load a checkpoint's L2Rec weights into ``model`` in place (same config and backbone,
    checked: a ValueError names what differs). The optimizer keeps pointing at the same
    parameters, which is what Trainer's resume and best-model reload need."""
    directory = os.fspath(directory)
    meta, w_path = read_checkpoint(directory)
    saved = L2RecConfig.from_dict(meta["config"])
    if saved != model.config:
        diff = {k: (v, getattr(model.config, k)) for k, v in saved.to_dict().items()
                if model.config.to_dict().get(k) != v}
        raise ValueError(f"{directory} holds a model with another config (field: (saved, this run)): {diff}")
    digest = meta.get("backbone_digest")
    problems = [] if digest is None else backbone_digest_mismatches(digest, model.backbone)
    if problems:
        raise ValueError(f"{directory} was trained on another backbone: {'; '.join(problems[:3])}")
    with torch.no_grad():
        model.load_own_state_dict(load_file(w_path, device="cpu"))
