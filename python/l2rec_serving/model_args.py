"""The command-line flags that choose the model (a ``loading.ServiceSpec``), declared once
for the HTTP server (``python -m l2rec_serving``) and the batch scorer
(``python -m l2rec_serving.batch``), with their cross-checks."""

from __future__ import annotations

import argparse


def add_model_arguments(ap: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--backbone``, ``--titles``, ``--prompt-template``, ``--device``,
    ``--dtype`` and ``--tiny-items``, in a "model" group."""
    g = ap.add_argument_group("model", "a checkpoint with its backbone, or the built-in tiny model")
    g.add_argument("--checkpoint", help="L2Rec checkpoint directory (save_pretrained output)")
    g.add_argument("--backbone", help="Hugging Face backbone directory or hub id (safetensors)")
    g.add_argument("--titles", help="item titles (JSON list or one per line) to build prompts from "
                                    "histories; without it a checkpoint's requests (or rows) need "
                                    "their prompt")
    g.add_argument("--prompt-template", help="prompt text with a {titles} placeholder")
    g.add_argument("--device", default="auto",
                   help="auto (cuda where the replica or actor sees a GPU), cpu, cuda, ...")
    g.add_argument("--dtype", default="auto", help="backbone dtype: auto, float32, bfloat16, float16")
    g.add_argument("--tiny-items", type=int, default=200,
                   help="catalogue size of the built-in model (default 200)")


def check_model_arguments(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The flags' cross-checks, as argparse errors (exit status 2) before anything starts."""
    if (args.checkpoint is None) != (args.backbone is None):
        ap.error("--checkpoint and --backbone go together")
    if args.titles and not args.checkpoint:
        ap.error("--titles needs --checkpoint (the tiny model has its own catalogue)")


def spec_from_args(args: argparse.Namespace, **more):
    """The ``ServiceSpec`` the model flags (and ``more`` of its fields) describe."""
    from .loading import ServiceSpec

    return ServiceSpec(checkpoint=args.checkpoint, backbone=args.backbone, titles=args.titles,
                       prompt_template=args.prompt_template, device=args.device, dtype=args.dtype,
                       tiny_num_items=args.tiny_items, **more)
