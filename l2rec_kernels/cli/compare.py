"""Compare L2Rec with SASRec and a peer library's baselines on one split, under one budget.

    python -m l2rec_kernels.compare --data recbole:ml-100k --backbone tiny --out build/compare
    python -m l2rec_kernels.compare --data movielens:ml-1m --backbone ~/models/Qwen3-0.6B \\
        --peers sasrec,bert4rec,pop --budget-min 30 --ablations --json table.json

Every row is trained on the same training split and chosen on the same validation split
(early stopping on NDCG@10, best epoch kept), each within the same wall-clock budget
(``--budget-min``) on the same machine, and then evaluated once on the test split by one
evaluator, ours: full ranking over every item, the user's history excluded, ties counted
against the target (docs/compare.md states the protocol). The rows:

* ``model``: L2Rec through ``FusedL2Rec``, the paper's two stages (``l2rec_kernels.train``):
  stage 1 trains the SASRec view encoder, stage 2 L2Rec over it, frozen. Both stages
  together get the budget; stage 1 at most ``--sasrec-budget-share`` of it.
* ``sasrec``: our stage-1 encoder alone as a recommender (full softmax over the catalogue,
  every position of each training sequence), trained with the whole budget. When it
  stopped early within L2Rec's stage-1 share, L2Rec's stage 1 *is* this run (same data,
  seed and procedure), so it is trained once and L2Rec's stage 2 gets the rest.
* ``popularity`` (training-split counts) and ``random`` (seeded uniform scores).
* each peer as ``<library>-<model>`` (``recbole-sasrec``, ``recbole-bert4rec``,
  ``recbole-pop``): run in its own virtual environment (``make peers``), fed our exact
  split, trained with its authors' defaults; its scores come back and are ranked by our
  evaluator, and its own evaluator's numbers (its protocol: history not excluded for
  sequential models) are a second column.
* with ``--ablations``: ``model-behavioral-only`` and ``model-semantic-only`` (the
  preference from one view alone, ``L2RecConfig.fusion_views``).

Output in ``--out``: ``compare_<data>_<date>.md`` (the table with training times, epochs,
validation NDCG@10, the peer's own numbers, the protocol, machine and commit), ``.csv``,
``.json`` (``{row: {"HR@10", "NDCG@10", "MRR"}}``, also written to ``--json``) and ``.png``
(HR@10 and NDCG@10 per row, with its training time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

DEFAULT_BUDGET_MIN = 6.0
OUR_PEERS = ("sasrec", "bert4rec", "pop")
# L2Rec's default recipe for this comparison (chosen on the validation split of ML-100K:
# docs/compare.md): the SASRec window of 50 items (RecBole's MAX_ITEM_LIST_LENGTH), the
# prompt's last 10 titles (a third of the cost of 50), every training position, a constant
# learning rate (the budget, not a schedule, ends the run), evaluated every 300 steps.
L2REC_RECIPE = ("--max-history", "50", "--prompt-history", "10", "--max-prompt-tokens", "160",
                "--train-positions", "0", "--batch-size", "32", "--lr", "3e-4", "--lr-scheduler", "constant",
                "--epochs", "100", "--eval-steps", "300", "--early-stopping-patience", "4")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m l2rec_kernels.compare", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", required=True, metavar="FORMAT:PATH",
                    help="interaction data, e.g. recbole:ml-100k (l2rec_kernels.data.FORMATS)")
    ap.add_argument("--backbone", default="tiny", metavar="DIR|tiny",
                    help="the frozen LLM: a local Hugging Face directory, or the tiny random stand-in")
    ap.add_argument("--peers", default=",".join(OUR_PEERS),
                    help=f"RecBole models to run as peers, comma-separated ({', '.join(OUR_PEERS)}); "
                         "'' for none")
    ap.add_argument("--budget-min", type=float, default=DEFAULT_BUDGET_MIN,
                    help="wall-clock training minutes per row (L2Rec: both stages together)")
    ap.add_argument("--sasrec-budget-share", type=float, default=0.5,
                    help="the share of L2Rec's budget its stage 1 may use")
    ap.add_argument("--out", default="build/compare", help="folder of the report (md, csv, json, png)")
    ap.add_argument("--runs", default=None, metavar="DIR",
                    help="folder of the training runs (default: OUT/runs)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write {row: metrics} here")
    ap.add_argument("--ablations", action="store_true",
                    help="add L2Rec with the behavioral view only and with the semantic view only")
    ap.add_argument("--min-interactions", type=int, default=5, help="k-core filter")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--peer-env", default=".venv-peers", help="the peers' virtual environment")
    ap.add_argument("--l2rec-args", default="", metavar="'ARGS'",
                    help="extra arguments for python -m l2rec_kernels.train (after the recipe's)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap


def data_name(spec: str) -> str:
    """A short name for file names: ``recbole:ml-100k`` -> ``ml-100k``."""
    path = spec.partition(":")[2].rstrip("/\\")
    stem = os.path.basename(path)
    stem = re.sub(r"\.(inter|csv|tsv|parquet|dat|data|json|jsonl)(\.\w+)?$", "", stem)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) or "data"


def _peer_rows(peers: str) -> list[str]:
    names = [p.strip().lower() for p in peers.split(",") if p.strip()]
    unknown = [n for n in names if n not in OUR_PEERS]
    if unknown:
        raise ValueError(f"--peers: unknown model(s) {unknown}; known: {', '.join(OUR_PEERS)}")
    return [f"recbole-{n}" for n in names]


def _metrics(ranks) -> dict[str, float]:
    import torch

    from ..metrics import ranking_metrics

    m = ranking_metrics(torch.as_tensor(ranks).long().reshape(-1), ks=(10,))
    return {k: float(m[k]) for k in ("HR@10", "NDCG@10", "MRR")}


def _train_l2rec(args, out: str, budget_s: float, extra: list[str], say) -> tuple[float, dict]:
    """Run ``python -m l2rec_kernels.train`` in-process; (seconds, its run record)."""
    from . import train

    argv = ["--data", args.data, "--backbone", args.backbone, "--out", out, "--seed", str(args.seed),
            "--min-interactions", str(args.min_interactions), "--budget-min", f"{budget_s / 60:.6f}",
            "--sasrec-budget-share", str(args.sasrec_budget_share), *L2REC_RECIPE, *extra,
            *args.l2rec_args.split()]
    if args.no_progress:
        argv.append("--no-progress")
    say("  python -m l2rec_kernels.train " + " ".join(argv))
    start = time.perf_counter()
    code = train.main(argv)
    if code != 0:
        raise RuntimeError(f"training L2Rec into {out} failed (exit status {code})")
    with open(os.path.join(out, "l2rec_training.json")) as f:
        return time.perf_counter() - start, json.load(f)


def _evaluate_l2rec(ckpt: str, split: str) -> dict[str, dict[str, float]]:
    """``python -m l2rec_kernels.evaluate`` in-process: {row: metrics} for model, popularity, random."""
    import contextlib
    import io

    from . import evaluate

    path = os.path.join(ckpt, f"{split}_metrics.json")
    with contextlib.redirect_stdout(io.StringIO()):
        code = evaluate.main(["--checkpoint", ckpt, "--split", split, "--json", path])
    if code != 0:
        raise RuntimeError(f"evaluating {ckpt} failed (exit status {code})")
    with open(path) as f:
        return json.load(f)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.budget_min <= 0:
        raise ValueError(f"--budget-min must be > 0, got {args.budget_min}")
    peer_rows = _peer_rows(args.peers)
    started = time.perf_counter()

    import torch

    from ..data import load_sequences
    from ..peers import PeerEnvMissing, peer_python, run_peer
    from ..training.sasrec import SASRecSpec, sasrec_ranks, save_sasrec, train_sasrec
    from .compare_report import Row, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    if peer_rows:  # fail before the training, not after it
        try:
            peer_python(args.peer_env)
        except PeerEnvMissing as exc:
            raise ValueError(f"{exc} (or run without peers: --peers '')") from None
    say = print
    out = os.path.abspath(args.out)
    runs = os.path.abspath(args.runs) if args.runs else os.path.join(out, "runs")
    os.makedirs(runs, exist_ok=True)
    budget_s = args.budget_min * 60
    data = load_sequences(args.data, min_interactions=args.min_interactions, max_history=50, verbose=True)
    test, valid = data.split("test"), data.split("valid")
    rows: list[Row] = []
    total = 2 + len(peer_rows) + (2 if args.ablations else 0)
    step = iter(range(1, total + 1))

    # ---- our SASRec, with the whole budget; L2Rec's stage 1 when it fits its share
    say(f"[{next(step)}/{total}] sasrec: our stage-1 SASRec, budget {args.budget_min:g} min")
    spec = SASRecSpec(data.num_items, max_len=50)
    sasrec_dir = os.path.join(runs, "sasrec")
    encoder, s1 = train_sasrec(data, spec, sasrec_dir, budget_s=budget_s, seed=args.seed,
                               progress=not args.no_progress, say=say)
    save_sasrec(encoder, spec, sasrec_dir, s1)
    rows.append(Row("sasrec", _metrics(sasrec_ranks(encoder, test, spec.max_len)),
                    valid_ndcg=_metrics(sasrec_ranks(encoder, valid, spec.max_len))["NDCG@10"],
                    seconds=s1.seconds, epochs=s1.epochs,
                    notes="stopped by the budget" if s1.stopped_by_budget else "early-stopped on validation"))

    # ---- L2Rec: stage 1 reused when it fits, else trained within its share
    share_s = budget_s * args.sasrec_budget_share
    reuse = not s1.stopped_by_budget and s1.seconds <= share_s

    def l2rec_row(name: str, extra: list[str]) -> Row:
        run = os.path.join(runs, name)
        if reuse:
            stage1 = ["--sasrec-checkpoint", sasrec_dir]
            left = budget_s - s1.seconds
        else:
            stage1, left = [], budget_s
        seconds, info = _train_l2rec(args, run, left, stage1 + extra, say)
        with open(os.path.join(run, "sasrec", "sasrec_config.json")) as f:
            s1_info = json.load(f).get("training") or {}
        stage1_s = s1.seconds if reuse else s1_info.get("seconds", 0.0)
        table = _evaluate_l2rec(run, "test")
        valid_table = _evaluate_l2rec(run, "valid")
        state = _trainer_state(run)
        return Row(name, table["model"], valid_ndcg=valid_table["model"]["NDCG@10"],
                   seconds=(s1.seconds if reuse else 0.0) + seconds, epochs=state.get("epoch"),
                   notes=f"stage 1 {stage1_s:.0f} s{' (the sasrec row)' if reuse else ''}, stage 2 "
                         f"{state.get('global_step', 0)} steps of 32 on "
                         + (f"each user's last {n} training positions" if (n := info.get("train_positions"))
                            else "every training position")
                         + f", prompts of the last {info['prompt'].get('history')} titles"), table

    say(f"[{next(step)}/{total}] model: L2Rec (FusedL2Rec, two stages), budget {args.budget_min:g} min")
    model_row, table = l2rec_row("model", [])
    rows.insert(0, model_row)
    for name in ("popularity", "random"):
        rows.append(Row(name, table[name], notes="our evaluator, no training"))
    if args.ablations:
        for view in ("behavioral", "semantic"):
            say(f"[{next(step)}/{total}] model-{view}-only")
            row, _ = l2rec_row(f"model-{view}-only", ["--fusion-views", view])
            rows.append(row)

    # ---- peers, each in its own environment, on the same split
    for name in peer_rows:
        say(f"[{next(step)}/{total}] {name}: budget {args.budget_min:g} min (in {args.peer_env})")
        result = run_peer(name, data, budget_s=budget_s, workdir=os.path.join(runs, name), seed=args.seed,
                          max_len=50, threads=args.threads, env=args.peer_env)
        rows.append(Row(name, _metrics(result.test_ranks), valid_ndcg=_metrics(result.valid_ranks)["NDCG@10"],
                        seconds=result.train_seconds, epochs=result.epochs, own=result.own_test,
                        notes="RecBole defaults; its scores ranked by our evaluator"))

    paths = write_report(rows, out=out, data_name=data_name(args.data), spec=args.data, data=data,
                         budget_min=args.budget_min, backbone=args.backbone, argv=sys.argv[1:] if argv is None
                         else list(argv), total_seconds=time.perf_counter() - started)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({r.name: r.metrics for r in rows}, f, indent=2)
            f.write("\n")
    with open(paths["md"]) as f:
        say(f.read())
    say("wrote " + ", ".join(paths.values()))
    return 0


def _trainer_state(run: str) -> dict:
    """The last Trainer checkpoint's state (epoch, global_step) of a training run."""
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(os.path.join(run, "checkpoints"))
    if last is None:
        return {}
    with open(os.path.join(last, "trainer_state.json")) as f:
        return json.load(f)
