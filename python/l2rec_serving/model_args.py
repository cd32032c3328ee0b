"""The command-line flags that choose the model (a ``loading.ServiceSpec``), declared once
for the HTTP server (``python -m l2rec_serving``) and the batch scorer
(``python -m l2rec_serving.batch``): ``add_model_arguments`` adds them to a parser and
``spec_from_args`` builds the spec from them. The cross-checks are ``ServiceSpec``'s own
(checkpoint with backbone, titles only with a checkpoint, known names, positive limits),
reported as argument errors, so a CLI states no rule of its own about the model."""

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


def spec_from_args(ap: argparse.ArgumentParser, args: argparse.Namespace, **more):
    """The ``ServiceSpec`` the model flags (and ``more`` of its fields, from a CLI's own
    flags) describe; what it refuses is an argparse error (exit status 2) before anything
    starts."""
    from .loading import ServiceSpec

    try:
        return ServiceSpec(checkpoint=args.checkpoint, backbone=args.backbone, titles=args.titles,
                           prompt_template=args.prompt_template, device=args.device, dtype=args.dtype,
                           tiny_num_items=args.tiny_items, **more)
    except (TypeError, ValueError) as exc:  # the message names the field (checkpoint, max_k, ...)
        ap.error(str(exc))
