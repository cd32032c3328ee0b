"""Training machinery in process (tiny model, CPU): the word tokenizer, the collator, the
Trainer's ranking evaluation against an independent computation, checkpoints in the
package's format (resume: test_train_cli)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainingArguments

from l2rec_kernels.data.sequences import SequenceData
from l2rec_kernels.models.fused import FusedL2Rec
from l2rec_kernels.models.reference import L2Rec
from l2rec_kernels.training.backbone import build_tiny_backbone, load_backbone, save_backbone
from l2rec_kernels.training.build import (
    build_model,
    default_template,
    item_titles,
    make_config,
    prompt_builder,
)
from l2rec_kernels.training.collator import L2RecCollator, SampledExample
from l2rec_kernels.training.trainer import L2RecTrainer, ranking_compute_metrics
from l2rec_kernels.word_tokenizer import build_word_tokenizer, prompt_texts

MAX_HISTORY = 6
WORDS = ["red", "blue", "green", "tall", "small", "quiet", "loud", "river", "stone", "cloud"]


def _data(num_users: int = 16, num_items: int = 30, seed: int = 0) -> SequenceData:
    """Users with 5..9 items each, titles of three words with punctuation."""
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, num_items + 1, (int(torch.randint(5, 10, (1,), generator=g)),),
                          generator=g).tolist() for _ in range(num_users)]
    titles = [f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]}-{WORDS[(i * 3) % 10]} ({1990 + i})"
              for i in range(num_items)]
    return SequenceData(seqs, [f"i{i}" for i in range(1, num_items + 1)],
                        [f"u{u}" for u in range(num_users)], titles, {}, MAX_HISTORY)


@pytest.fixture(scope="module")
def data():
    return _data()


def _parts(data, preset: str = "default"):
    """(model, collator) on a new tiny backbone (the same weights every call)."""
    titles = item_titles(data)
    backbone, tokenizer = build_tiny_backbone(prompt_texts(titles, default_template()), max_positions=256,
                                              hidden=32, layers=2, heads=2, kv_heads=1)
    torch.manual_seed(0)
    config = make_config(preset, data.num_items, MAX_HISTORY, behavior_dim=16, pref_dim=16)
    model = build_model(backbone, tokenizer, config, titles)
    return model, L2RecCollator(prompt_builder(titles, tokenizer, 96), MAX_HISTORY)


def _args(out, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=64,
                learning_rate=3e-3, report_to="none", disable_tqdm=True, remove_unused_columns=False,
                eval_strategy="no", save_strategy="no", logging_steps=1, seed=0, data_seed=0,
                dataloader_pin_memory=False)
    return TrainingArguments(**{**base, **kw})


def _own(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.own_state_dict().items()}


def test_word_tokenizer_covers_the_prompts_and_round_trips(tmp_path, data):
    titles = item_titles(data)
    tok = build_word_tokenizer(prompt_texts(titles, default_template()))
    ids = prompt_builder(titles, tok, 10_000)([1, 2, 3])
    assert tok.unk_token_id not in ids and ids[0] == tok.bos_token_id
    words = tok.convert_ids_to_tokens(ids)
    assert words[:4] == ["[BOS]", "the", "user", "recently"] and ";" in words and "(" in words
    capped = build_word_tokenizer(prompt_texts(titles, default_template()), max_words=5)
    assert len(capped) == 3 + 5 and capped.unk_token_id in capped(titles[0])["input_ids"]
    backbone, _ = build_tiny_backbone(["a b"], max_positions=64)
    save_backbone(backbone, tok, tmp_path / "bb")
    assert not list((tmp_path / "bb").glob("*.bin"))
    loaded_backbone, loaded = load_backbone(tmp_path / "bb")
    assert loaded(titles[4])["input_ids"] == tok(titles[4])["input_ids"]
    for (n, a), b in zip(backbone.state_dict().items(), loaded_backbone.state_dict().values()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="max_words"):
        build_word_tokenizer(["a"], max_words=0)


def test_collator_builds_the_model_inputs(data):
    _, collator = _parts(data)
    examples = list(data.split("train"))[:5]
    batch = collator(examples)
    builder = collator.prompt_builder
    width = max(len(builder(ex.history)) for ex in examples)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (5, width)
    for i, ex in enumerate(examples):
        tokens = builder(ex.history)
        pad = width - len(tokens)
        assert batch["input_ids"][i, pad:].tolist() == tokens  # left-padded
        assert batch["attention_mask"][i].tolist() == [0] * pad + [1] * len(tokens)
        hist = ex.history[-MAX_HISTORY:]
        assert batch["history_ids"][i].tolist() == hist + [0] * (MAX_HISTORY - len(hist))
        assert batch["seen"][i, : len(ex.seen)].tolist() == ex.seen
        assert not batch["seen"][i, len(ex.seen):].any()
    assert batch["labels"].tolist() == [ex.target for ex in examples]
    assert "candidates" not in batch
    sampled = collator([SampledExample(ex, [ex.target, 1, 2]) for ex in examples[:2]])
    assert sampled["candidates"].tolist() == [[ex.target, 1, 2] for ex in examples[:2]]
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="mixes"):
        collator([examples[0], SampledExample(examples[1], [1, 2])])
    with pytest.raises(ValueError, match="max_history"):
        L2RecCollator(builder, 0)


def _ranks_by_hand(scores: torch.Tensor, targets: list[int], seen: list[list[int]]) -> list[int]:
    """The full-ranking protocol item by item: items 1..N, the user's seen items excluded
    (never the target), ties against the target."""
    out = []
    for row, target, excluded in zip(scores.tolist(), targets, seen):
        others = [i for i in range(1, len(row)) if i != target and i not in set(excluded)]
        out.append(sum(row[i] >= row[target] for i in others))
    return out


def test_evaluation_ranks_loss_and_metrics_match_an_independent_computation(tmp_path, data):
    model, collator = _parts(data)
    valid = list(data.split("valid"))
    candidates = [[ex.target, *[i for i in range(1, 31) if i not in ex.seen and i != ex.target][:4]]
                  for ex in valid]
    trainer = L2RecTrainer(model=model, args=_args(tmp_path, per_device_eval_batch_size=5),
                           data_collator=collator, compute_metrics=ranking_compute_metrics)
    out = trainer.predict([SampledExample(ex, c) for ex, c in zip(valid, candidates)])

    batch = collator(valid)
    with torch.no_grad():
        full = model(batch["input_ids"], batch["attention_mask"], batch["history_ids"]).scores.double()
    want = _ranks_by_hand(full, [ex.target for ex in valid], [ex.seen for ex in valid])
    assert out.predictions[:, 0].tolist() == want
    sampled_want = [sum(full[u, c].item() >= full[u, cand[0]].item() for c in cand[1:])
                    for u, cand in enumerate(candidates)]
    assert out.predictions[:, 1].tolist() == sampled_want
    # eval loss: the whole-catalogue cross-entropy, averaged over users
    ce = F.cross_entropy(full, batch["labels"])
    assert out.metrics["test_loss"] == pytest.approx(ce.item(), rel=1e-5)
    m = out.metrics
    assert m["test_HR@10"] == pytest.approx(sum(r < 10 for r in want) / len(want))
    assert m["test_NDCG@10"] == pytest.approx(sum(1 / math.log2(r + 2) for r in want if r < 10) / len(want))
    assert m["test_MRR"] == pytest.approx(sum(1 / (r + 1) for r in want) / len(want))
    assert m["test_sampled_HR@1"] == pytest.approx(sum(r == 0 for r in sampled_want) / len(want))


def test_a_trainer_checkpoint_is_the_package_format_and_only_the_l2rec_weights_train(tmp_path, data):
    """Three steps, saved at step 3: the frozen backbone never moves, every trainable tensor
    does, and the checkpoint is the package's format. (Resuming from it is test_train_cli's
    resume test.)"""
    train = list(data.split("train"))[:36]
    model, collator = _parts(data)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = _own(model)
    L2RecTrainer(model=model, args=_args(tmp_path / "run", max_steps=3, save_strategy="steps",
                                         save_steps=3),
                 data_collator=collator, train_dataset=train).train()
    after = _own(model)
    for k, v in model.backbone.state_dict().items():  # the backbone never trains
        assert torch.equal(v, frozen[k]), k
    trained = [k for k, p in model.named_parameters() if p.requires_grad]
    assert trained and not any(k.startswith("backbone.") for k in trained)
    assert all(not torch.equal(after[k], before[k]) for k in trained), "every trainable tensor moves"
    ckpt = tmp_path / "run" / "checkpoint-3"

    # The checkpoint: the package's format (no backbone, no pickled model), loadable by both models.
    files = set(os.listdir(ckpt))
    assert {"l2rec_config.json", "l2rec_weights.safetensors", "training_args.json", "optimizer.pt",
            "scheduler.pt", "trainer_state.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "training_args.bin"}
    weights = load_file(ckpt / "l2rec_weights.safetensors")
    assert not any(k.startswith("backbone.") for k in weights)
    assert json.loads((ckpt / "training_args.json").read_text())["save_steps"] == 3
    for cls in (FusedL2Rec, L2Rec):
        loaded = cls.from_pretrained(ckpt, backbone=model.backbone)
        assert loaded.config == model.config
    with pytest.raises(ValueError, match="another config"):
        other, _ = _parts(_data(num_items=31))
        trainer = L2RecTrainer(model=other, args=_args(tmp_path / "x"), data_collator=collator)
        trainer._load_from_checkpoint(str(ckpt))


def test_paper_preset_logs_its_auxiliary_losses(tmp_path, data):
    model, collator = _parts(data, preset="paper")
    trainer = L2RecTrainer(model=model, args=_args(tmp_path, max_steps=2), data_collator=collator,
                           train_dataset=data.split("train"))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2
    assert all({"aux_load_balance", "aux_contrastive"} <= set(h) for h in logged)
    assert all(math.isfinite(h["aux_contrastive"]) and h["aux_load_balance"] > 0 for h in logged)
