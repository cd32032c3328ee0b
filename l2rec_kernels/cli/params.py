"""``python -m l2rec_kernels.training.params``: count an L2Rec model's trainable parameters
(``l2rec_kernels.training.params``) for a named backbone shape or a backbone directory."""

from __future__ import annotations

import argparse
import json

from ..models.config import L2RecConfig
from ..training.params import (
    AMAZON_BEAUTY_ITEMS,
    BACKBONE_SHAPES,
    backbone_config,
    format_report,
    parameter_report_for_config,
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Count an L2Rec model's trainable parameters from "
                                             "configs alone (meta device, no weights).")
    ap.add_argument("--shape", default="qwen3-0.6b", choices=sorted(BACKBONE_SHAPES),
                    help="named backbone shape (default qwen3-0.6b)")
    ap.add_argument("--backbone-config", default=None, metavar="DIR",
                    help="a transformers config.json folder instead of --shape (only the config is read)")
    ap.add_argument("--num-items", type=int, default=AMAZON_BEAUTY_ITEMS,
                    help=f"catalogue size (default {AMAZON_BEAUTY_ITEMS}, Amazon Beauty 5-core)")
    ap.add_argument("--preset", choices=("paper", "default"), default="paper",
                    help="L2RecConfig.paper(...) or L2RecConfig(...) (iLoRA's defaults)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        config = (L2RecConfig.paper(args.num_items) if args.preset == "paper"
                  else L2RecConfig(num_items=args.num_items))
    except ValueError as e:
        ap.error(f"--num-items: {e}")
    if args.backbone_config is not None:
        from transformers import AutoConfig

        report = parameter_report_for_config(AutoConfig.from_pretrained(args.backbone_config), config)
    else:
        report = parameter_report_for_config(backbone_config(args.shape), config)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
