"""Train an L2Rec model on interaction data with Hugging Face's Trainer.

    python -m l2rec_kernels.train --data movielens:ml-1m --backbone tiny --out runs/ml1m
    python -m l2rec_kernels.train --data amazon2018:Beauty --backbone ~/models/Qwen3-0.6B \\
        --preset paper --out runs/beauty --bf16
    torchrun --nproc_per_node 2 -m l2rec_kernels.train ...        (DDP: gloo on CPU, nccl on GPU)
    python -m l2rec_kernels.train ... --resume-from-checkpoint last

The data is read and split leave-one-out (``l2rec_kernels.data``), then the paper's two
stages run:

1. **SASRec** (``training.sasrec``): the behavioral view's encoder and its item-ID table
   are trained alone on the training split (every position, full softmax), stopped early
   on validation NDCG@10, and saved to ``OUT/sasrec``. ``--sasrec-checkpoint DIR`` reuses
   a trained one instead; ``--no-sasrec-stage`` skips it (the encoder stays random, as
   before this stage existed); resuming reuses ``OUT/sasrec`` when it is there.
2. **L2Rec**: ``FusedL2Rec`` (the fast path, unchanged) trains its experts, routers, fusion
   and scorer over the frozen backbone with that encoder frozen (the paper's setting;
   ``--train-view-encoders`` trains it too), is evaluated on the validation split with
   full-ranking HR@K / NDCG@K / MRR after every epoch (or every ``--eval-steps``), stops
   early when NDCG@10 stops improving and ends with its best weights, saved to ``--out``
   in the package's checkpoint format (``FusedL2Rec.from_pretrained``).

``--budget-min`` bounds the wall-clock time of both stages together (stage 1 gets at most
``--sasrec-budget-share`` of it); ``--train-positions N`` trains stage 2 on each user's
last N training positions only. See docs/training.md for the whole story.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time


def build_parser() -> argparse.ArgumentParser:
    from .._backend import BACKENDS
    from ..training.backbone import TINY, TINY_DEFAULTS
    from ..training.build import PRESETS
    from ..training.sasrec import STAGE1_DEFAULTS, SASRecSpec

    ap = argparse.ArgumentParser(prog="python -m l2rec_kernels.train",
                                 description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, metavar="FORMAT:PATH",
                    help="interaction data, e.g. movielens:ml-1m (l2rec_kernels.data.FORMATS)")
    ap.add_argument("--backbone", required=True, metavar=f"DIR|{TINY}",
                    help="a local Hugging Face causal LM directory (safetensors), or 'tiny': the "
                         "built-in tiny random-weight Llama with a word tokenizer over the titles")
    ap.add_argument("--out", required=True, metavar="CKPT", help="output checkpoint directory")
    ap.add_argument("--preset", default="default", choices=PRESETS,
                    help="L2RecConfig defaults, or L2RecConfig.paper")
    d = ap.add_argument_group("data")
    d.add_argument("--min-interactions", type=int, default=5, help="k-core filter")
    d.add_argument("--max-history", type=int, default=20,
                   help="history items the model reads (the SASRec view's window)")
    d.add_argument("--prompt-history", type=int, default=None,
                   help="history items whose titles make the prompt (default: --max-history)")
    d.add_argument("--train-positions", type=int, default=0,
                   help="> 0: stage 2 trains on each user's last N training positions only")
    d.add_argument("--max-prompt-tokens", type=int, default=256, help="prompt length (the end is kept)")
    d.add_argument("--template", default=None, help="prompt template with {titles} (default: the server's)")
    m = ap.add_argument_group("model (None: the preset's value)")
    m.add_argument("--num-experts", type=int)
    m.add_argument("--rank", type=int)
    m.add_argument("--alpha", type=float)
    m.add_argument("--top-k", type=int)
    m.add_argument("--behavior-dim", type=int)
    m.add_argument("--pref-dim", type=int)
    m.add_argument("--fusion-views", choices=("both", "behavioral", "semantic"), default=None,
                   help="an ablation: the preference from one view alone (L2RecConfig.fusion_views)")
    m.add_argument("--train-view-encoders", action="store_true", default=None,
                   help="also train the SASRec view encoder and its item-ID table (frozen by "
                        "default, as in the paper, where it is pretrained)")
    m.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="FusedL2Rec backend (auto: each op's differentiable path under grad mode)")
    s1 = ap.add_argument_group("stage 1: the SASRec view encoder (training.sasrec)")
    s1.add_argument("--sasrec-checkpoint", default=None, metavar="DIR",
                    help="a trained stage-1 encoder (OUT/sasrec of an earlier run) instead of training one")
    s1.add_argument("--no-sasrec-stage", action="store_true",
                    help="skip stage 1: the frozen SASRec stays at its random initialisation")
    s1.add_argument("--sasrec-epochs", type=float, default=STAGE1_DEFAULTS["epochs"])
    s1.add_argument("--sasrec-batch-size", type=int, default=STAGE1_DEFAULTS["batch_size"],
                    help="windows per step")
    s1.add_argument("--sasrec-lr", type=float, default=STAGE1_DEFAULTS["lr"])
    s1.add_argument("--sasrec-dropout", type=float, default=SASRecSpec.dropout)
    s1.add_argument("--sasrec-ffn", type=int, default=None,
                    help="feed-forward width (default: --behavior-dim)")
    s1.add_argument("--sasrec-patience", type=int, default=STAGE1_DEFAULTS["patience"],
                    help="epochs without a better validation NDCG@10 before stopping")
    s1.add_argument("--sasrec-budget-share", type=float, default=0.5,
                    help="the share of --budget-min stage 1 may use")
    t = ap.add_argument_group("tiny backbone (--backbone tiny)")
    for name, value in TINY_DEFAULTS.items():
        t.add_argument(f"--tiny-{name.replace('_', '-')}", type=int, default=value)
    t.add_argument("--tiny-max-words", type=int, default=None, help="vocabulary cap (default: all words)")
    o = ap.add_argument_group("optimisation (Hugging Face TrainingArguments)")
    o.add_argument("--epochs", type=float, default=3.0)
    o.add_argument("--max-steps", type=int, default=-1, help="> 0: stop after this many optimizer steps")
    o.add_argument("--budget-min", type=float, default=None,
                   help="wall-clock minutes for both stages (stops at the budget, keeping the best "
                        "validation model)")
    o.add_argument("--batch-size", type=int, default=32, help="examples per device per step")
    o.add_argument("--eval-batch-size", type=int, default=None, help="default: 2 x --batch-size")
    o.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--lr-scheduler", default="linear", help="Trainer lr_scheduler_type")
    o.add_argument("--warmup-steps", type=int, default=0)
    o.add_argument("--max-grad-norm", type=float, default=1.0)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    o.add_argument("--fp16", action="store_true", help="fp16 autocast with loss scaling (GPU)")
    o.add_argument("--eval-steps", type=int, default=None,
                   help="evaluate (and save) every N steps (default: every epoch)")
    o.add_argument("--early-stopping-patience", type=int, default=3,
                   help="evaluations without a better validation NDCG@10 before stopping (0: never)")
    o.add_argument("--save-total-limit", type=int, default=2, help="Trainer checkpoints kept")
    o.add_argument("--logging-steps", type=int, default=10)
    o.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    o.add_argument("--resume-from-checkpoint", default=None, metavar="PATH|last",
                   help="a Trainer checkpoint (CKPT/checkpoints/checkpoint-N), or 'last'")
    o.add_argument("--report-to", default="none", help="Trainer report_to (tensorboard, wandb, ...)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def _check_args(args) -> None:
    import torch

    for name in ("batch_size", "grad_accum", "max_prompt_tokens", "max_history", "logging_steps",
                 "sasrec_batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.prompt_history is not None and args.prompt_history < 1:
        raise ValueError(f"--prompt-history must be >= 1, got {args.prompt_history}")
    if args.train_positions < 0:
        raise ValueError(f"--train-positions must be >= 0, got {args.train_positions}")
    if args.budget_min is not None and args.budget_min <= 0:
        raise ValueError(f"--budget-min must be > 0, got {args.budget_min}")
    if not 0 < args.sasrec_budget_share <= 1:
        raise ValueError(f"--sasrec-budget-share must be in (0, 1], got {args.sasrec_budget_share}")
    if args.sasrec_checkpoint is not None and args.no_sasrec_stage:
        raise ValueError("--sasrec-checkpoint and --no-sasrec-stage exclude each other")
    if args.eval_steps is not None and args.eval_steps < 1:
        raise ValueError(f"--eval-steps must be >= 1, got {args.eval_steps}")
    if args.bf16 and args.fp16:
        raise ValueError("--bf16 and --fp16 exclude each other")
    if (args.bf16 or args.fp16) and not torch.cuda.is_available():
        raise ValueError(f"--{'bf16' if args.bf16 else 'fp16'} is for GPU training; no CUDA device "
                         "is visible (train in float32 on the CPU)")


def training_arguments(args, output_dir: str):
    """Hugging Face ``TrainingArguments`` from the CLI flags."""
    import torch
    from transformers import TrainingArguments

    from ..training.distributed import ddp_backend

    strategy = "steps" if args.eval_steps else "epoch"
    return TrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.eval_batch_size or 2 * args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        weight_decay=args.weight_decay, lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm,
        seed=args.seed, data_seed=args.seed, bf16=args.bf16, fp16=args.fp16,
        eval_strategy=strategy, eval_steps=args.eval_steps, save_strategy=strategy,
        save_steps=args.eval_steps, save_total_limit=args.save_total_limit,
        load_best_model_at_end=True, metric_for_best_model="NDCG@10", greater_is_better=True,
        logging_steps=args.logging_steps, report_to=args.report_to,
        disable_tqdm=args.no_progress, dataloader_num_workers=args.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        # The batches hold plain tensors of our own names: nothing for Trainer to drop.
        remove_unused_columns=False,
        # use_cpu without CUDA: accelerate then runs torchrun's processes as CPU DDP (gloo);
        # without it they would each train alone.
        use_cpu=not torch.cuda.is_available(), ddp_backend=ddp_backend(),
        # Every rank builds the same buffers (item-text table, rotary tables): no per-step
        # broadcast; every trainable tensor is used in every step.
        ddp_broadcast_buffers=False, ddp_find_unused_parameters=False)


def _resume_path(value: str | None, output_dir: str) -> str | None:
    """The Trainer checkpoint ``--resume-from-checkpoint`` names (``last``: the newest)."""
    from transformers.trainer_utils import get_last_checkpoint

    if value == "last":
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ValueError(f"--resume-from-checkpoint last: no checkpoint in {output_dir}")
        return last
    if value is not None and not os.path.isdir(value):
        raise ValueError(f"--resume-from-checkpoint {value}: not a directory")
    return value


def _backbone(args, saved_tiny: str | None, titles: list[str], template: str):
    """(backbone, tokenizer): ``saved_tiny`` when given, else a new tiny one, else ``--backbone``."""
    from ..training.backbone import TINY, build_tiny_backbone, load_backbone
    from ..word_tokenizer import prompt_texts

    if saved_tiny is not None:
        return load_backbone(saved_tiny)
    if args.backbone == TINY:
        return build_tiny_backbone(
            prompt_texts(titles, template), max_positions=args.max_prompt_tokens, seed=args.seed,
            max_words=args.tiny_max_words, hidden=args.tiny_hidden, layers=args.tiny_layers,
            heads=args.tiny_heads, kv_heads=args.tiny_kv_heads)
    return load_backbone(args.backbone)


SASREC_SUBDIR = "sasrec"  # where a run keeps its stage-1 encoder


def _stage1(args, data, config, out: str, resume, start: float, main_process: bool, say):
    """Stage 1 (``training.sasrec``): (encoder, spec) to freeze into L2Rec, or None with
    ``--no-sasrec-stage``. A given ``--sasrec-checkpoint`` (or, when resuming, the run's own
    ``OUT/sasrec``) is loaded instead of trained."""
    from ..training.sasrec import SASRecSpec, load_sasrec, save_sasrec, train_sasrec

    if args.no_sasrec_stage:
        say("stage 1 skipped (--no-sasrec-stage): the SASRec view encoder stays random")
        return None
    saved = os.path.join(out, SASREC_SUBDIR)
    source = args.sasrec_checkpoint or (saved if resume is not None and os.path.isdir(saved) else None)
    if source is not None:
        encoder, spec = load_sasrec(source)
        say(f"stage 1: the SASRec encoder from {source}")
        if source != saved and main_process:
            save_sasrec(encoder, spec, saved)
        return encoder, spec
    spec = SASRecSpec.of_config(config)
    budget = None if args.budget_min is None else \
        args.budget_min * 60 * args.sasrec_budget_share - (time.perf_counter() - start)
    encoder, result = train_sasrec(data, spec, saved, epochs=args.sasrec_epochs,
                                   batch_size=args.sasrec_batch_size, lr=args.sasrec_lr,
                                   patience=args.sasrec_patience, budget_s=budget, seed=args.seed,
                                   progress=not args.no_progress, say=say)
    if main_process:
        save_sasrec(encoder, spec, saved, result)
        # Trainer's own checkpoints of stage 1 (optimizer states): its result is saved above.
        shutil.rmtree(os.path.join(saved, "checkpoints"), ignore_errors=True)
    return encoder, spec


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    start = time.perf_counter()

    import torch
    from transformers import EarlyStoppingCallback, set_seed

    from ..data import load_sequences
    from ..training.backbone import BACKBONE_SUBDIR, TINY, save_backbone
    from ..training.build import (
        build_model,
        default_template,
        item_titles,
        make_config,
        parameter_summary,
        prompt_builder,
    )
    from ..training.checkpoint import write_run_info, write_titles
    from ..training.collator import L2RecCollator
    from ..training.distributed import end_process_group
    from ..training.trainer import L2RecTrainer, ranking_compute_metrics

    if args.no_progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out = os.path.abspath(args.out)
    targs = training_arguments(args, os.path.join(out, "checkpoints"))
    main_process = targs.process_index == 0
    say = print if main_process else (lambda *a, **k: None)
    resume = _resume_path(args.resume_from_checkpoint, targs.output_dir)

    set_seed(args.seed)
    data = load_sequences(args.data, min_interactions=args.min_interactions,
                          max_history=args.max_history, verbose=main_process)
    titles = item_titles(data)
    template = args.template or default_template()

    saved_tiny = os.path.join(out, BACKBONE_SUBDIR)
    # Resuming a tiny-backbone run reloads the backbone it was trained on instead of a rebuild.
    reuse_tiny = args.backbone == TINY and resume is not None and os.path.isdir(saved_tiny)
    backbone, tokenizer = _backbone(args, saved_tiny if reuse_tiny else None, titles, template)
    config = make_config(args.preset, data.num_items, args.max_history, num_experts=args.num_experts,
                         rank=args.rank, alpha=args.alpha, top_k=args.top_k,
                         behavior_dim=args.behavior_dim, pref_dim=args.pref_dim,
                         train_view_encoders=args.train_view_encoders, sasrec_dropout=args.sasrec_dropout,
                         sasrec_ffn=args.sasrec_ffn,
                         fusion_views=args.fusion_views)
    stage1 = _stage1(args, data, config, out, resume, start, main_process, say)
    torch.manual_seed(args.seed)  # the L2Rec weights' initialisation
    model = build_model(backbone, tokenizer, config, titles, backend=args.backend, device=targs.device)
    if stage1 is not None:
        from ..training.sasrec import load_into_l2rec

        load_into_l2rec(model, *stage1)

    backbone_info = ({"kind": TINY, "path": saved_tiny} if args.backbone == TINY
                     else {"kind": "dir", "path": os.path.abspath(args.backbone)})
    run_info = {"data": args.data, "min_interactions": args.min_interactions,
                "max_history": args.max_history, "num_items": data.num_items,
                "prompt": {"template": template, "max_tokens": args.max_prompt_tokens,
                           "history": args.prompt_history or args.max_history},
                "preset": args.preset, "seed": args.seed, "backbone": backbone_info,
                "sasrec_stage": None if stage1 is None else SASREC_SUBDIR,
                "train_positions": args.train_positions or None}
    if main_process:
        os.makedirs(out, exist_ok=True)
        if args.backbone == TINY and not reuse_tiny:
            save_backbone(backbone, tokenizer, saved_tiny)
        write_titles(out, titles)
        write_run_info(out, run_info)

    train_set, valid_set = data.split("train"), data.split("valid")
    if args.train_positions:
        train_set = train_set.last_per_user(args.train_positions)
    world = targs.world_size
    say(f"data: {data.num_users} users, {data.num_items} items; {len(train_set)} training"
        f"{f' (each user’s last {args.train_positions} positions)' if args.train_positions else ''} and "
        f"{len(valid_set)} validation examples")
    say(f"batch: {args.batch_size} per device x {world} process(es) x {args.grad_accum} accumulation "
        f"= {args.batch_size * world * args.grad_accum} examples per optimizer step; device {targs.device}")
    say(parameter_summary(model))
    callbacks = ([EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)]
                 if args.early_stopping_patience > 0 else [])
    if args.budget_min is not None:
        from ..training.sasrec import TimeBudgetCallback

        left = args.budget_min * 60 - (time.perf_counter() - start)
        say(f"stage 2 (L2Rec): {max(left, 0):.0f} s of the {args.budget_min:g}-minute budget left")
        callbacks.append(TimeBudgetCallback(max(left, 1e-3)))
    collator = L2RecCollator(prompt_builder(titles, tokenizer, args.max_prompt_tokens, template),
                             args.max_history, args.prompt_history)
    trainer = L2RecTrainer(model=model, args=targs, data_collator=collator, train_dataset=train_set,
                           eval_dataset=valid_set, compute_metrics=ranking_compute_metrics,
                           callbacks=callbacks, run_info=run_info)
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(out)  # the best weights (load_best_model_at_end), main process only
    state = trainer.state
    if state.best_metric is not None:
        say(f"best validation NDCG@10 {state.best_metric:.4f} at step {state.best_global_step} "
            f"({state.best_model_checkpoint})")
    say(f"trained {state.global_step} steps in {result.metrics.get('train_runtime', 0):.1f} s "
        f"({time.perf_counter() - start:.1f} s in all)")
    say(f"wrote {out}")
    end_process_group()
    return 0
