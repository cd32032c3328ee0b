"""Evaluate a trained L2Rec checkpoint next to a most-popular and a random baseline.

    python -m l2rec_kernels.evaluate --checkpoint runs/ml1m [--split test|valid] [--json FILE]
    python -m l2rec_kernels.evaluate --checkpoint runs/ml1m --data movielens:ml-1m --backbone tiny --sampled

Full ranking (the default protocol): each user's target is ranked among all items, the
user's history excluded, ties counted against it; HR@10, NDCG@10 and MRR over the split's
users. ``--sampled`` adds the iLoRA/LLaRA protocol (the target among itself and 19 random
unseen items, seeded), reported as ``sampled HR@1``: sampled metrics can order models
differently from full ranking, so they are labelled as such and never replace it.

``--data`` and ``--backbone`` default to what the checkpoint was trained with
(``l2rec_training.json``); ``--backbone tiny`` (or the checkpoint directory) is the tiny
backbone saved inside it. Runs under ``torchrun`` too (the model's ranks are computed on
every process, the table printed once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

COLUMNS = ("HR@10", "NDCG@10", "MRR")
SAMPLED_COLUMN = "sampled HR@1"
NUM_NEGATIVES = 19  # the sampled protocol: target + 19 negatives (iLoRA, LLaRA)


def build_parser() -> argparse.ArgumentParser:
    from .._backend import BACKENDS

    ap = argparse.ArgumentParser(prog="python -m l2rec_kernels.evaluate", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", required=True, metavar="CKPT", help="a trained checkpoint directory")
    ap.add_argument("--backbone", default=None, metavar="DIR|tiny",
                    help="backbone directory (default: the one the checkpoint was trained on)")
    ap.add_argument("--data", default=None, metavar="FORMAT:PATH",
                    help="interaction data (default: the checkpoint's training data)")
    ap.add_argument("--split", default="test", choices=("test", "valid"))
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON")
    ap.add_argument("--sampled", action="store_true",
                    help=f"add the sampled protocol (target + {NUM_NEGATIVES} random unseen items, HR@1)")
    ap.add_argument("--min-interactions", type=int, default=None, help="default: as trained")
    ap.add_argument("--max-history", type=int, default=None, help="default: as trained")
    ap.add_argument("--batch-size", type=int, default=64, help="users per forward (per device)")
    ap.add_argument("--seed", type=int, default=0, help="random baseline and sampled negatives")
    ap.add_argument("--backend", default="auto", choices=BACKENDS, help="FusedL2Rec backend")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--require-beating-baselines", action="store_true",
                    help="exit with status 1 unless the model's HR@10 and NDCG@10 beat both baselines")
    return ap


def baseline_shortfalls(table: dict[str, dict[str, float]]) -> list[str]:
    """Where the model does not beat a baseline on HR@10 or NDCG@10 ([] when it beats both)."""
    return [f"{col}: model {table['model'][col]:.4f} <= {row} {table[row][col]:.4f}"
            for row in ("popularity", "random") for col in ("HR@10", "NDCG@10")
            if not table["model"][col] > table[row][col]]


def metric_rows(ranks_by_row: dict, sampled: bool) -> dict[str, dict[str, float]]:
    """{row: {"HR@10", "NDCG@10", "MRR"[, "sampled HR@1"]}} from each row's ranks [U] or [U, 2]."""
    import torch

    from ..metrics import ranking_metrics

    table = {}
    for row, ranks in ranks_by_row.items():
        ranks = torch.as_tensor(ranks).long().reshape(len(ranks), -1)
        full = ranking_metrics(ranks[:, 0], ks=(10,))
        table[row] = {c: float(full[c]) for c in COLUMNS}
        if sampled:
            table[row][SAMPLED_COLUMN] = float(ranking_metrics(ranks[:, 1], ks=(1,))["HR@1"])
    return table


def format_table(table: dict[str, dict[str, float]], title: str) -> str:
    columns = list(next(iter(table.values())))
    width = max(len(c) for c in columns) + 2
    lines = [title, f"{'':<12}" + "".join(f"{c:>{width}}" for c in columns)]
    lines += [f"{row:<12}" + "".join(f"{vals[c]:>{width}.4f}" for c in columns)
              for row, vals in table.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()

    import torch
    from transformers import TrainingArguments

    from ..data import load_sequences
    from ..metrics import sampled_candidates
    from ..models.fused import FusedL2Rec
    from ..training.backbone import load_backbone, resolve_backbone
    from ..training.baselines import baseline_ranks, popularity_table
    from ..training.build import default_template, item_titles, prompt_builder
    from ..training.checkpoint import read_run_info
    from ..training.collator import L2RecCollator, SampledExample
    from ..training.distributed import ddp_backend, end_process_group
    from ..training.trainer import L2RecTrainer

    ckpt = os.path.abspath(args.checkpoint)
    if not os.path.isdir(ckpt):
        raise ValueError(f"--checkpoint {args.checkpoint}: not a directory")
    info = read_run_info(ckpt) or {}
    spec = args.data or info.get("data")
    if spec is None:
        raise ValueError(f"{ckpt} does not record its training data: pass --data FORMAT:PATH")
    min_interactions = (args.min_interactions if args.min_interactions is not None
                        else info.get("min_interactions", 5))
    max_history = args.max_history if args.max_history is not None else info.get("max_history", 20)
    if args.bf16 and not torch.cuda.is_available():
        raise ValueError("--bf16 is for GPU evaluation; no CUDA device is visible")
    # (Trainer wants an output directory; prediction writes nothing, so not the checkpoint's)
    scratch = tempfile.TemporaryDirectory(prefix="l2rec-evaluate-")
    targs = TrainingArguments(output_dir=scratch.name, report_to="none",
                              per_device_eval_batch_size=args.batch_size, bf16=args.bf16,
                              remove_unused_columns=False, disable_tqdm=True, seed=args.seed,
                              dataloader_pin_memory=torch.cuda.is_available(),
                              use_cpu=not torch.cuda.is_available(), ddp_backend=ddp_backend())
    main_process = targs.process_index == 0

    data = load_sequences(spec, min_interactions=min_interactions, max_history=max_history,
                          verbose=main_process)
    backbone, tokenizer = load_backbone(resolve_backbone(args.backbone, ckpt, info.get("backbone")))
    model = FusedL2Rec.from_pretrained(ckpt, backbone=backbone.to(targs.device), backend=args.backend)
    if model.num_items != data.num_items:
        raise ValueError(f"{ckpt} scores {model.num_items} items but {spec} (min_interactions="
                         f"{min_interactions}) has {data.num_items}: evaluate on the data it was trained on")
    prompt = info.get("prompt", {})
    collator = L2RecCollator(
        prompt_builder(item_titles(data), tokenizer, prompt.get("max_tokens", 256),
                       prompt.get("template") or default_template()),
        min(max_history, model.config.max_history), prompt.get("history"))

    examples = data.split(args.split)
    candidates = None
    dataset = examples
    if args.sampled:
        candidates = sampled_candidates(torch.as_tensor(examples.targets), [ex.seen for ex in examples],
                                        data.num_items, num_negatives=NUM_NEGATIVES,
                                        generator=torch.Generator().manual_seed(args.seed))
        dataset = [SampledExample(ex, row) for ex, row in zip(examples, candidates.tolist())]
    trainer = L2RecTrainer(model=model, args=targs, data_collator=collator)
    model_ranks = torch.as_tensor(trainer.predict(dataset).predictions)
    scratch.cleanup()
    end_process_group()  # the rest is the main process's, with no collective left
    if not main_process:
        return 0

    popularity = popularity_table(data)
    ranks = {"model": model_ranks,
             "popularity": baseline_ranks("popularity", examples, data.num_items, popularity=popularity,
                                          candidates=candidates),
             "random": baseline_ranks("random", examples, data.num_items, candidates=candidates,
                                      seed=args.seed)}
    table = metric_rows(ranks, args.sampled)
    title = (f"{args.split} split of {spec}: {len(examples)} users, full ranking over {data.num_items} "
             "items, history excluded" + (f"; {SAMPLED_COLUMN}: target + {NUM_NEGATIVES} sampled "
                                          "unseen items" if args.sampled else ""))
    print(format_table(table, title))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
            f.write("\n")
    print(f"evaluated in {time.perf_counter() - start:.1f} s")
    if args.require_beating_baselines:
        short = baseline_shortfalls(table)
        if short:
            print("the model does not beat the baselines: " + "; ".join(short), file=sys.stderr)
            return 1
        print("the model beats popularity and random on HR@10 and NDCG@10")
    return 0
