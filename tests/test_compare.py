"""``python -m l2rec_kernels.compare`` end to end on the 60-user RecBole fixture (tiny
backbone, a one-minute budget, no peers): every row, the four report files, the JSON shape,
and the clear error when the peers' environment is missing."""

from __future__ import annotations

import json
import pathlib

import pytest

from l2rec_kernels.cli import compare
from l2rec_kernels.cli._run import run

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = f"recbole:{ROOT / 'tests/data/interactions/recbole-demo'}"


def test_compare_writes_every_row_within_the_budget(tmp_path, capsys):
    out = tmp_path / "report"
    table = tmp_path / "table.json"
    argv = ["--data", DEMO, "--backbone", "tiny", "--peers", "", "--budget-min", "1", "--out", str(out),
            "--json", str(table), "--no-progress", "--threads", "1",
            "--l2rec-args", "--epochs 2 --eval-steps 10 --tiny-hidden 32 --tiny-heads 2 --tiny-kv-heads 1"]
    assert compare.main(argv) == 0
    rows = json.loads(table.read_text())
    assert list(rows) == ["model", "sasrec", "popularity", "random"]
    for metrics in rows.values():
        assert set(metrics) == {"HR@10", "NDCG@10", "MRR"}
        assert 0 <= metrics["NDCG@10"] <= metrics["HR@10"] <= 1
    # (what the stage-1 SASRec learns is tested in test_sasrec_stage.py; 60 users say little)
    files = sorted(p.suffix for p in out.iterdir() if p.name.startswith("compare_recbole-demo_"))
    assert files == [".csv", ".json", ".md", ".png"]
    report = next(out.glob("compare_recbole-demo_*.json"))
    assert json.loads(report.read_text()) == rows
    md = next(out.glob("compare_recbole-demo_*.md")).read_text()
    assert "| model |" in md and "history is excluded" in md and "tiny random-weight" in md
    printed = capsys.readouterr().out
    assert "[2/2] model" in printed and "wrote" in printed


def test_a_missing_peer_environment_is_one_clear_error(tmp_path, capsys):
    code = run(compare.main, "python -m l2rec_kernels.compare",
               ["--data", DEMO, "--peers", "sasrec", "--peer-env", str(tmp_path / "nowhere"),
                "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "make peers" in err, err
    with pytest.raises(ValueError, match="unknown model"):
        compare.main(["--data", DEMO, "--peers", "lightgcn", "--out", str(tmp_path / "o")])
