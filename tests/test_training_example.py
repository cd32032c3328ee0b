"""The reference model learns: hit rate on a planted preference rises far above chance,
with the default setup and with the paper's (L2RecConfig.paper)."""

import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_synthetic.py"


def _example():
    spec = importlib.util.spec_from_file_location("train_synthetic", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_training_raises_hit_rate_well_above_chance():
    r = _example().train(steps=120, verbose=False)
    assert r["hit_rate_after"] > 4 * r["chance"], r
    assert r["hit_rate_after"] > r["hit_rate_before"] + 0.15, r
    assert r["aux_losses"] == {}


def test_paper_preset_learns_with_its_aux_losses():
    """--preset paper: shared experts, context-aware top-2 routers, both auxiliary losses."""
    r = _example().train(steps=120, verbose=False, preset="paper")
    assert r["hit_rate_after"] > 4 * r["chance"], r
    assert r["hit_rate_after"] > r["hit_rate_before"] + 0.15, r
    assert set(r["aux_losses"]) == {"load_balance", "contrastive"}, r
