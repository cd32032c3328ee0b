"""L2Rec on a real Hugging Face checkpoint: train, save, reload, recommend, then serve.

    python examples/real_checkpoint.py --backbone DIR --items titles.txt --out CKPT \\
        [--histories histories.txt] [--steps 200] [--batch-size 16] [--k 10]
    python -m l2rec_serving --port 8000 --checkpoint CKPT --backbone DIR --titles titles.txt

``DIR`` is a local Hugging Face causal-LM directory (``config.json``, ``*.safetensors``
weights, tokenizer files), e.g. a downloaded Qwen3-0.6B. It is loaded with
``AutoModelForCausalLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``
and stays frozen. The default ``target_modules`` are the Llama-family projection names
(Llama, Qwen2/3, Mistral, ...). Only safetensors weights are read, as the server does.

``titles.txt``: one item title per line; item i (1-based, as in history ids) is line i.

Interactions: ``--histories FILE`` has one user per line, the ids of the items they
interacted with, oldest first, separated by spaces (blank lines and lines starting with
``#`` are skipped; users with fewer than two items are dropped: they give no example).
Each training example is a random user cut at a random point: the items before the cut
(the most recent ``--max-history``) are the history, the item at the cut is the label.
Without ``--histories``, synthetic users are drawn from the titles: each prefers one block
of neighbouring lines of the items file (a smoke run of the pipeline, not your users).

The prompt is the server's default title prompt (``l2rec_serving.prompts``: the history's
titles filled into ``DEFAULT_TEMPLATE``, tokenised by the checkpoint's tokenizer), so
``python -m l2rec_serving ... --titles titles.txt`` serves the model with the prompts it
was trained on. After training the script saves the model (``save_pretrained``), reloads
it as a ``FusedL2Rec`` (``from_pretrained(CKPT, backbone=...)``), checks it scores like
the trained model and prints the top ``--k`` items for a few users.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections.abc import Sequence

import torch
from l2rec_serving.prompts import DEFAULT_TEMPLATE, TitlePromptBuilder
from l2rec_serving.service import max_prompt_tokens

import l2rec_kernels as lk
from l2rec_kernels.models.encoders import build_item_text_table
from l2rec_kernels.models.inputs import pad_rows

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ----------------------------------------------------------------------------- loading
def load_backbone(path: str | os.PathLike, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """(backbone, tokenizer) from a local Hugging Face directory. A tokenizer without a pad
    token (Llama's, Mistral's) pads with its EOS token: only the item-text table pads, and
    it masks the padding out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    backbone = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"the tokenizer in {path} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return backbone.to(device).eval(), tokenizer


def read_titles(path: str | os.PathLike) -> list[str]:
    """One title per line (the format ``python -m l2rec_serving --titles`` reads)."""
    with open(path, encoding="utf-8") as f:
        titles = f.read().splitlines()
    blank = [i + 1 for i, t in enumerate(titles) if not t.strip()]
    if blank:
        raise ValueError(f"{path}: line {blank[0]} is blank (every line is one item's title)")
    if not titles:
        raise ValueError(f"{path} has no titles")
    return titles


def read_histories(path: str | os.PathLike, num_items: int) -> list[list[int]]:
    """Users with at least two items, from a file of space-separated item ids per line."""
    users = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                items = [int(tok) for tok in line.split()]
            except ValueError:
                raise ValueError(f"{path}:{n}: expected item ids separated by spaces") from None
            bad = [i for i in items if not 1 <= i <= num_items]
            if bad:
                raise ValueError(f"{path}:{n}: item id {bad[0]} is out of range 1..{num_items}")
            if len(items) >= 2:
                users.append(items)
    if not users:
        raise ValueError(f"{path}: no user with at least two items")
    return users


def synthetic_histories(num_items: int, num_users: int = 512, length: int = 12,
                        num_blocks: int | None = None, noise: float = 0.2,
                        seed: int = 0) -> list[list[int]]:
    """Users who each prefer one block of neighbouring items (lines of the items file):
    ``length`` items per user, a ``noise`` share of them drawn from the whole catalogue."""
    rng = random.Random(seed)
    num_blocks = num_blocks or max(1, min(10, num_items // 5))
    size = math.ceil(num_items / num_blocks)
    users = []
    for _ in range(num_users):
        start = rng.randrange(num_blocks) * size
        block = range(start + 1, min(start + size, num_items) + 1)
        users.append([rng.randint(1, num_items) if rng.random() < noise else rng.choice(block)
                      for _ in range(length)])
    return users


# ----------------------------------------------------------------------------- batches
def model_inputs(histories: Sequence[Sequence[int]], prompt: TitlePromptBuilder, max_history: int,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """input_ids/attention_mask (the title prompts, left-padded) and history_ids (the most
    recent ``max_history`` items, right-padded), as the server builds them."""
    recent = [list(h)[-max_history:] for h in histories]
    inputs = pad_rows([prompt(h) for h in recent], side="left")
    history = torch.zeros(len(recent), max_history, dtype=torch.long)
    for i, h in enumerate(recent):
        history[i, : len(h)] = torch.tensor(h, dtype=torch.long)
    return {k: v.to(device) for k, v in {**inputs, "history_ids": history}.items()}


def sample_examples(users: Sequence[Sequence[int]], batch_size: int, rng: random.Random):
    """(histories, next items): random users cut at a random point."""
    histories, targets = [], []
    for _ in range(batch_size):
        items = users[rng.randrange(len(users))]
        cut = rng.randint(1, len(items) - 1)
        histories.append(items[:cut])
        targets.append(items[cut])
    return histories, torch.tensor(targets)


def whole_history_exclusions(histories: Sequence[Sequence[int]], device="cpu") -> torch.Tensor:
    """[B, X] every item of each user's history (-1 padded), for ``recommend(exclude_ids=)``."""
    seen = [sorted(set(h)) for h in histories]
    out = torch.full((len(seen), max(1, max(map(len, seen)))), -1, dtype=torch.long)
    for i, items in enumerate(seen):
        out[i, : len(items)] = torch.tensor(items, dtype=torch.long)
    return out.to(device)


# ----------------------------------------------------------------------------- the recipe
def train(model: lk.L2Rec, users, prompt: TitlePromptBuilder, steps: int, batch_size: int = 16,
          lr: float = 3e-3, seed: int = 0, log_every: int = 20, verbose: bool = True) -> list[float]:
    """AdamW on L2Rec's trainable tensors (the backbone stays frozen); the step losses."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for step in range(1, steps + 1):
        histories, targets = sample_examples(users, batch_size, rng)
        out = model(**model_inputs(histories, prompt, model.config.max_history, device),
                    labels=targets.to(device))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        if verbose and (step == 1 or step % log_every == 0 or step == steps):
            print(f"step {step:4d}  loss {losses[-1]:.3f}", flush=True)
    return losses


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", required=True, help="local Hugging Face causal-LM directory")
    ap.add_argument("--items", required=True, help="item titles, one per line (item i = line i)")
    ap.add_argument("--out", required=True, help="where to save the L2Rec checkpoint")
    ap.add_argument("--histories", help="user histories: one user per line, item ids oldest first "
                                        "(default: synthetic users drawn from the titles)")
    ap.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-history", type=int, default=10, help="history items the model reads")
    ap.add_argument("--k", type=int, default=10, help="items to recommend per shown user")
    ap.add_argument("--show", type=int, default=3, help="users to recommend for at the end")
    ap.add_argument("--device", default="auto", help="auto (cuda if visible), cpu, cuda, ...")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="backbone dtype")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true", help="print nothing (for scripts and tests)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.max_history < 1 or args.k < 1 or args.show < 1:
        ap.error("--steps, --batch-size, --max-history, --k and --show must be >= 1")
    return args


def main(argv=None) -> dict:
    """Run the recipe; returns what it did (losses, checkpoint, shown users' top-k, ...)."""
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    torch.manual_seed(args.seed)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    start = time.perf_counter()
    backbone, tokenizer = load_backbone(args.backbone, device, DTYPES[args.dtype])
    titles = read_titles(args.items)
    users = (read_histories(args.histories, len(titles)) if args.histories
             else synthetic_histories(len(titles), length=args.max_history + 2, seed=args.seed))
    log(f"backbone {type(backbone).__name__} from {args.backbone}; {len(titles)} items, "
        f"{len(users)} users ({'from ' + args.histories if args.histories else 'synthetic'})")

    cfg = lk.L2RecConfig(num_items=len(titles), max_history=args.max_history, top_k=2)
    model = lk.L2Rec(backbone, cfg)
    model.set_item_text_table(build_item_text_table(titles, backbone, tokenizer))
    prompt = TitlePromptBuilder(titles, tokenizer, max_prompt_tokens(model), DEFAULT_TEMPLATE)
    losses = train(model, users, prompt, args.steps, args.batch_size, args.lr, args.seed,
                   verbose=not args.quiet)
    model.eval()
    model.save_pretrained(args.out)
    log(f"saved {args.out}")

    # Reload as the fast model (what a server runs) and check it scores as trained.
    fused = lk.FusedL2Rec.from_pretrained(args.out, backbone=backbone).eval()
    shown = [u[-args.max_history:] for u in users[: args.show]]
    inputs = model_inputs(shown, prompt, args.max_history, device)
    k = min(args.k, len(titles) - max(len(set(h)) for h in shown))
    with torch.no_grad():
        trained, reloaded = model(**inputs).scores, fused(**inputs).scores
        scores, items = fused.recommend(**inputs, k=k, exclude_ids=whole_history_exclusions(shown, device))
    finite = torch.isfinite(trained)
    max_diff = (trained[finite] - reloaded[finite]).abs().max().item()
    model.remove_adapters()  # the trained model's job is done; the backbone serves ``fused``
    for history, row in zip(shown, items.tolist()):
        log(f"\nhistory: {' | '.join(titles[i - 1] for i in history)}")
        log(f"top {k}:   {' | '.join(titles[i - 1] for i in row)}")
    log(f"\nloss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps; reloaded scores differ "
        f"by at most {max_diff:.2e}; {time.perf_counter() - start:.1f}s in all")
    log(f"serve it: python -m l2rec_serving --port 8000 --checkpoint {args.out} "
        f"--backbone {args.backbone} --titles {args.items}")
    return {"losses": losses, "checkpoint": args.out, "histories": shown, "items": items.tolist(),
            "scores": scores.float().tolist(), "max_score_diff": max_diff, "model": fused,
            "tokenizer": tokenizer}


if __name__ == "__main__":
    main(sys.argv[1:])
