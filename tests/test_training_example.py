"""The reference model learns: hit rate on a planted preference rises far above chance."""

import importlib.util
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_synthetic.py"


def test_training_raises_hit_rate_well_above_chance():
    spec = importlib.util.spec_from_file_location("train_synthetic", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.train(steps=120, verbose=False)
    assert r["hit_rate_after"] > 4 * r["chance"], r
    assert r["hit_rate_after"] > r["hit_rate_before"] + 0.15, r
