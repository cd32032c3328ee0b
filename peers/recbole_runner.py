"""Train and evaluate one RecBole 1.2.1 model on a split written by our side, in the peer
environment (``.venv-peers``, ``make peers``). A script, not part of ``l2rec_kernels``: it
imports RecBole, which must never be imported into the package's environment.
``l2rec_kernels.peers.run_peer`` runs it and reads what it writes.

Protocol (docs: /work/shared/DESIGN.md section 6, and ``l2rec_kernels.peers``):

* Data: ``--split-dir`` holds one atomic file ``<name>.inter`` (``user_id:token``,
  ``item_id:token``, ``timestamp:float``) whose timestamp is each interaction's position in
  its user's sequence (0, 1, 2, ...): RecBole sorts by a float32 copy of the timestamp, so
  positions make the order exactly ours. No filtering (the data is already k-cored).
* Split: RecBole's own leave-one-out, ``eval_args: {split: {LS: valid_and_test}, order: TO,
  group_by: user, mode: full}``: last item = test, second last = validation, the rest
  trains. Identical to ``SequenceData.split``; ``split.json`` lets our side check it.
* Model: RecBole's defaults for the model (its authors' settings) plus the settings in
  ``CONFIG`` below; SASRec and BERT4Rec train with their default full-softmax CE loss
  (``train_neg_sample_args: None``). Pop keeps RecBole's defaults entirely (its trainer runs
  one epoch; stock Pop counts an item at most once per batch and, with the default uniform
  negative sampling, counts the sampled negatives too: it is what the peer ships).
* Training: up to ``--epochs`` epochs with RecBole's early stopping (``stopping_step`` 10
  on validation NDCG@10), and also stopping at the first epoch end after ``--budget-s``
  seconds of training (RecBole's ``early_stopping`` hook is wrapped to say stop). The best
  validation checkpoint is reloaded for evaluation.
* Outputs in ``--out``: ``scores_valid.npy`` / ``scores_test.npy`` (float32 [num_users,
  num_items + 1] in OUR ids: row u = our user u, column i = our item i, column 0 = -inf;
  the best model's raw ``full_sort_predict`` scores for the history before the valid / test
  target, nothing masked: our evaluator masks the history itself), ``split.json`` (each
  user's valid and test targets and the test history RecBole used) and ``result.json``
  (``own_valid`` / ``own_test``: RecBole's own evaluator and protocol: sequential models
  with the history NOT masked, ties broken by ``torch.topk``, MRR cut at 10).

``--metric-check FILE.npz`` (``scores`` [U, N + 1], ``targets`` [U], ``seen`` [U, S] padded
with -1; with ``--out``): no training; RecBole's own Hit/NDCG/MRR@10 classes on the scores
with the history and column 0 set to -inf, written to ``<out>/metric_check.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# RecBole 1.2.1 reloads its own checkpoints (written below by this process, in --out) with a
# plain torch.load, which torch >= 2.6 refuses without weights_only=False.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

import numpy as np
import torch

MODELS = ("SASRec", "BERT4Rec", "Pop")
SEQUENTIAL = ("SASRec", "BERT4Rec")
K = 10


def config_dict(model: str, *, max_len: int, epochs: int, seed: int, checkpoint_dir: str) -> dict:
    """The settings we pass on top of RecBole's defaults (recorded in result.json)."""
    cfg = {
        # Our split, exactly: leave-one-out in time order, full ranking, no filtering.
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "MAX_ITEM_LIST_LENGTH": max_len,
        # What we report and select on.
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [K],
        "valid_metric": "NDCG@10",
        "metric_decimal_place": 8,  # the default 4 rounds the reported metrics
        "epochs": epochs,
        "stopping_step": 10,
        # Housekeeping: CPU, files under --out, no progress bars or W&B, reproducible.
        "use_gpu": torch.cuda.is_available(),
        "checkpoint_dir": checkpoint_dir,
        "show_progress": False,
        "log_wandb": False,
        "reproducibility": True,
        "seed": seed,
    }
    if model in SEQUENTIAL:
        cfg["train_neg_sample_args"] = None  # full-softmax CE, the models' default loss
    return cfg


def _budget_hook(trainer_module, budget_s: float, state: dict) -> None:
    """Wrap RecBole's early-stopping hook (called by ``Trainer.fit`` after each epoch's
    validation) so that it also says stop once ``budget_s`` seconds of training have gone."""
    original = trainer_module.early_stopping

    def early_stopping(value, best, cur_step, max_step, bigger=True):
        best, cur_step, stop, update = original(value, best, cur_step, max_step, bigger=bigger)
        state["epochs"] += 1
        if time.monotonic() - state["start"] >= budget_s and not stop:
            stop, state["budget_stop"] = True, True
        return best, cur_step, stop, update

    trainer_module.early_stopping = early_stopping


def _tokens(dataset, field: str) -> np.ndarray:
    """RecBole's internal id -> our integer id (internal 0 is its padding: -1)."""
    tok = dataset.field2id_token[field]
    out = np.full(len(tok), -1, dtype=np.int64)
    for j, t in enumerate(tok):
        if j > 0:
            out[j] = int(t)
    return out


@torch.no_grad()
def collect(model, loader, dataset, uid_field: str, iid_field: str, num_users: int, num_items: int,
            sequential: bool, device) -> tuple[np.ndarray, dict]:
    """Full-catalogue scores in our ids, and each user's target and history, from a full-sort
    evaluation loader (RecBole's own, as its ``Trainer.evaluate`` iterates it)."""
    user_of, item_of = _tokens(dataset, uid_field), _tokens(dataset, iid_field)
    cols = item_of[1:]
    scores = np.full((num_users, num_items + 1), -np.inf, dtype=np.float32)
    targets: dict[int, int] = {}
    histories: dict[int, list[int]] = {}
    list_field = iid_field + "_list"
    model.eval()
    for interaction, _history_index, positive_u, positive_i in loader:
        interaction = interaction.to(device)
        s = model.full_sort_predict(interaction).view(len(interaction), -1).float().cpu().numpy()
        users = user_of[interaction[uid_field].cpu().numpy()]
        scores[users[:, None], cols[None, :]] = s[:, 1:]
        for r, i in zip(positive_u.tolist(), positive_i.tolist()):
            if int(users[r]) in targets:
                raise RuntimeError(f"user {users[r]} has more than one target in one split")
            targets[int(users[r])] = int(item_of[i])
        if sequential:
            seq = interaction[list_field].cpu().numpy()
            length = interaction["item_length"].cpu().numpy()
            for r, u in enumerate(users.tolist()):
                histories[u] = item_of[seq[r, :length[r]]].tolist()
    if not sequential:  # the items RecBole masks for the user: everything before the target
        for uid, hist in enumerate(loader.uid2history_item):
            if hist is not None and uid > 0:
                histories[int(user_of[uid])] = sorted(item_of[np.asarray(hist, dtype=np.int64)].tolist())
    return scores, {"targets": targets, "histories": histories}


def _read_inter(split_dir: Path) -> tuple[str, int, int]:
    files = sorted(split_dir.glob("*.inter"))
    if len(files) != 1:
        raise SystemExit(f"--split-dir must hold exactly one .inter file, found {[f.name for f in files]}")
    data = np.loadtxt(files[0], dtype=np.float64, delimiter="\t", skiprows=1, ndmin=2)
    return files[0].stem, int(data[:, 0].max()) + 1, int(data[:, 1].max())


def train(args) -> None:
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import trainer as trainer_module
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    split_dir, out = Path(args.split_dir).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name, num_users, num_items = _read_inter(split_dir)
    # RecBole writes log/ and log_tensorboard/ into the working directory: keep them in --out.
    work = out / "recbole-cwd"
    work.mkdir(exist_ok=True)
    os.chdir(work)

    cfg = config_dict(args.model, max_len=args.max_len, epochs=args.epochs, seed=args.seed,
                      checkpoint_dir=str(out / "checkpoints"))
    config = Config(model=args.model, dataset=name, config_dict=cfg)
    config["data_path"] = str(split_dir)  # Config joins data_path and the dataset name
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    if args.threads:
        torch.set_num_threads(args.threads)

    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    # Importing RecBole's model zoo (its SINE module) turns anomaly detection on for the whole
    # process, which costs about a third of the training speed: off again.
    torch.autograd.set_detect_anomaly(False)

    state = {"start": time.monotonic(), "epochs": 0, "budget_stop": False}
    _budget_hook(trainer_module, args.budget_s, state)
    state["start"] = time.monotonic()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    train_seconds = time.monotonic() - state["start"]

    own_valid = trainer.evaluate(valid_data, load_best_model=True, show_progress=False)
    own_test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    sequential = args.model in SEQUENTIAL
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    full = dataset  # field2id_token is shared by the built splits
    sv, valid_info = collect(trainer.model, valid_data, full, uid, iid, num_users, num_items, sequential,
                             config["device"])
    st, test_info = collect(trainer.model, test_data, full, uid, iid, num_users, num_items, sequential,
                            config["device"])
    np.save(out / "scores_valid.npy", sv)
    np.save(out / "scores_test.npy", st)
    split = {
        "num_users": num_users,
        "num_items": num_items,
        "history_kind": "sequence" if sequential else "set",
        "max_len": args.max_len if sequential else None,
        "valid_target": [valid_info["targets"].get(u) for u in range(num_users)],
        "test_target": [test_info["targets"].get(u) for u in range(num_users)],
        "test_history": [test_info["histories"].get(u) for u in range(num_users)],
    }
    (out / "split.json").write_text(json.dumps(split))

    def metrics(res) -> dict:
        return {k: float(res[k]) for k in (f"hit@{K}", f"ndcg@{K}", f"mrr@{K}")}

    result = {
        "model": args.model,
        "train_seconds": train_seconds,
        "epochs": state["epochs"] if state["epochs"] else 1,
        "stopped_by_budget": state["budget_stop"],
        "best_valid_ndcg10": float(best_valid) if best_valid != -np.inf else float(own_valid[f"ndcg@{K}"]),
        "own_valid": metrics(own_valid),
        "own_test": metrics(own_test),
        "recbole_version": recbole.__version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "threads": torch.get_num_threads(),
        "budget_s": args.budget_s,
        "config": cfg,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("model", "train_seconds", "epochs", "own_test")}))


def metric_check(args) -> None:
    """RecBole's own metric classes (through its Collector and Evaluator) on given scores."""
    from recbole.config import Config
    from recbole.evaluator import Collector, Evaluator

    Config.compatibility_settings(None)  # RecBole's own numpy aliases (np.float, ...) for its metrics
    z = np.load(args.metric_check)
    scores = torch.from_numpy(np.asarray(z["scores"], dtype=np.float32)).clone()
    targets = torch.from_numpy(np.asarray(z["targets"], dtype=np.int64))
    seen = np.asarray(z["seen"], dtype=np.int64)
    rows, cols = np.nonzero(seen >= 0)
    scores[torch.from_numpy(rows), torch.from_numpy(seen[rows, cols])] = -np.inf  # history masked
    scores[:, 0] = -np.inf  # padding, as RecBole's trainer does
    cfg = {"metrics": ["Hit", "NDCG", "MRR"], "topk": [K], "metric_decimal_place": 12,
           "eval_args": {"mode": "full"}, "device": torch.device("cpu")}
    collector, evaluator = Collector(cfg), Evaluator(cfg)
    collector.eval_batch_collect(scores, None, torch.arange(len(targets)), targets)
    result = evaluator.evaluate(collector.get_data_struct())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metric_check.json").write_text(json.dumps({k: float(v) for k, v in result.items()}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split-dir",
                   help="folder with the one <name>.inter file (l2rec_kernels.peers.write_split)")
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--budget-s", type=float, default=float("inf"),
                   help="training stops at the first epoch end after this many seconds")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, default=50, help="MAX_ITEM_LIST_LENGTH")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--metric-check", help="an .npz of scores/targets/seen: RecBole's metrics only")
    args = p.parse_args(argv)
    if args.metric_check:
        metric_check(args)
        return
    if not args.split_dir or not args.model:
        p.error("--split-dir and --model are required unless --metric-check is given")
    train(args)


if __name__ == "__main__":
    sys.exit(main())
