"""The frozen backbone a training or evaluation run uses: a local Hugging Face model
directory, or the project's tiny random-weight Llama with a word-level tokenizer.

``--backbone DIR``  ``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local directory,
                    safetensors weights only (a directory with only pickled weights is
                    refused, not loaded).
``--backbone tiny`` at training time: ``tiny_backbone("llama", ...)`` sized to a word
                    vocabulary built from the data's titles and the prompt template
                    (``word_tokenizer``). It is saved into the checkpoint as an
                    ordinary Hugging Face directory (``CKPT/backbone``: config.json,
                    model.safetensors, tokenizer.json), so evaluation, resuming, the
                    server and anyone else load exactly the weights the model was trained
                    on: at evaluate time ``--backbone tiny`` (or ``--backbone CKPT``) means
                    that directory.
"""

from __future__ import annotations

import glob
import os

import torch

TINY = "tiny"
BACKBONE_SUBDIR = "backbone"  # where a checkpoint keeps the tiny backbone it was trained on
# The tiny backbone's default shape: the project's tiny Llama (models.tiny).
TINY_DEFAULTS = dict(hidden=64, layers=2, heads=4, kv_heads=2)


def build_tiny_backbone(texts, *, max_positions: int, seed: int = 0, max_words: int | None = None,
                        hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    """(random-weight tiny Llama, word tokenizer over ``texts``): the vocabulary is the
    tokenizer's, positions cover ``max_positions`` tokens, weights come from ``seed``."""
    from ..models.tiny import tiny_backbone
    from ..word_tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(texts, max_words=max_words)
    backbone = tiny_backbone("llama", hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                             vocab=len(tokenizer), max_positions=max(512, max_positions), seed=seed)
    return backbone, tokenizer


def load_backbone(path: str | os.PathLike, dtype: torch.dtype | None = None):
    """(causal LM, tokenizer) from a local Hugging Face directory with safetensors weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"--backbone {path}: not a directory (give a local Hugging Face model "
                         f"directory, or '{TINY}')")
    if not glob.glob(os.path.join(path, "*.safetensors")):
        found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(path, "*.bin")))
        extra = f" (it has {', '.join(found)}: pickled weights are not loaded)" if found else ""
        raise ValueError(f"--backbone {path}: no *.safetensors weights in this directory{extra}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"--backbone {path}: no usable tokenizer files ({exc})") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # (titles are embedded in padded batches; padding is masked, any id does)
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {} if dtype is None else {"dtype": dtype}
    backbone = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs)
    return backbone.eval(), tokenizer


def save_backbone(backbone, tokenizer, path: str | os.PathLike) -> None:
    """Write the backbone (safetensors) and its tokenizer as a Hugging Face directory."""
    backbone.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def resolve_backbone(spec: str | None, checkpoint: str | os.PathLike, recorded: dict | None) -> str:
    """The backbone directory to evaluate ``checkpoint`` with.

    ``recorded`` is what training wrote into the checkpoint (``{"kind": "tiny" | "dir",
    "path": ...}``, the path relative to the checkpoint directory or absolute). ``spec``
    None: that backbone; ``"tiny"`` or the checkpoint directory itself: the tiny backbone
    saved with the checkpoint; anything else: that directory."""
    checkpoint = os.fspath(checkpoint)
    saved = None
    if recorded is not None and recorded.get("kind") == TINY:
        saved = os.path.normpath(os.path.join(checkpoint, recorded["path"]))
    elif os.path.isdir(os.path.join(checkpoint, BACKBONE_SUBDIR)):
        saved = os.path.join(checkpoint, BACKBONE_SUBDIR)
    if spec is None:
        if recorded is None:
            raise ValueError(f"{checkpoint} does not say which backbone it was trained on: pass --backbone")
        return os.path.normpath(os.path.join(checkpoint, recorded["path"]))
    if spec == TINY or os.path.abspath(spec) == os.path.abspath(checkpoint):
        if saved is None or not os.path.isdir(saved):
            raise ValueError(f"--backbone {spec}: {checkpoint} has no saved tiny backbone (it was not "
                             f"trained with --backbone {TINY}): pass the backbone directory it was "
                             "trained on")
        return saved
    return spec
