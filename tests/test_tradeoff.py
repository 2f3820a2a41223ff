"""bench/tradeoff.py: one report of accuracy against rerank latency over the four model kinds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import run_tasks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """<out>/virt (teacher, siamese baseline, VIRT) and <out>/tiny (plain and distilled tiny), tiny models."""
    from tests.tiny_runs import sample_task_overrides

    root = tmp_path_factory.mktemp("tradeoff")
    common = sample_task_overrides(root, n_train=64) + ["train.steps_per_epoch=2"]
    out = root / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert run_tasks.main(["--task", "virt", "--out", str(out / "virt"), "--set", *common, "model.num_layers=2"]) == 0
        assert run_tasks.main(["--task", "distill", "--out", str(out / "tiny"), "--set", *common, "model.num_layers=1",
                               f"distill.teacher={out / 'virt' / 'teacher' / 'model'}"]) == 0
        import tradeoff

        tradeoff.main(["--out", str(out), "--K", "8", "--seconds", "0.2", "--note", "test"])
    return out


def tradeoff_gap_cell(row):
    import tradeoff

    return tradeoff.gap_cell(row)


def test_gap_cell_by_hand():
    import tradeoff

    assert tradeoff.gap_cell({"gap_closed": 0.6667, "gap_closed_ci95": [0.2857, 1.0]}) == "67% [29%, 100%]"
    assert tradeoff.gap_cell({"gap_closed": -0.25, "gap_closed_ci95": None}) == "-25%"
    assert tradeoff.gap_cell({"gap_closed": None}) == ""


def test_report_places_every_model_with_its_own_scores(runs):
    report = json.loads((runs / "tradeoff.json").read_text())
    rows = report["rows"]
    assert [r["model"].split(",")[0] for r in rows] == ["cross-encoder", "tiny cross-encoder", "distilled tiny",
                                                        "siamese (sbert head)", "VIRT"]
    virt, tiny = (json.loads((runs / d / "metrics.json").read_text()) for d in ("virt", "tiny"))
    expected = [virt["teacher"]["test"], tiny["baseline"]["test"], tiny["test"], virt["baseline"]["test"], virt["test"]]
    for row, m in zip(rows, expected):
        assert row["split"] == "test" and row["accuracy"] == pytest.approx(m["accuracy"])
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["qps"] > 0
    assert rows[0]["model"].endswith("4 layers") and rows[2]["model"].endswith("1 layer")  # random init: 4 = default depth
    assert report["K"] == 8 and report["query_len"] > 2 and report["cand_len"] > 2
    md = (runs / "tradeoff.md").read_text()
    assert "| VIRT, 2 layers |" in md and "1.0x |" in md  # the cross-encoder against itself
    # the students' rows carry the share of the teacher gap their run closed (its metrics.json), and the interval
    for row, m in zip(rows, [None, None, tiny, None, virt]):
        assert row["gap_closed"] == (None if m is None else (m.get("gap_closed") or {}).get("test"))
        assert row["gap_closed_ci95"] == (None if m is None else (m.get("gap_closed_ci95") or {}).get("test"))
        assert (tradeoff_gap_cell(row) == "") is (row["gap_closed"] is None)
    assert "Gap closed: a student's share" in md
    png = (runs / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_ablation_scores_every_model_on_one_file_with_paired_tests(runs, tmp_path):
    """bench/ablation.py on the runs above: each accuracy is its run's own test accuracy, the McNemar
    counts are the accuracy difference pair by pair, and the gap share is worked from the accuracies."""
    import yaml

    import ablation

    test_file = yaml.safe_load((runs / "virt" / "config.yaml").read_text())["data"]["test"]
    models = {"teacher": runs / "virt" / "teacher" / "model", "plain": runs / "tiny" / "baseline" / "model",
              "kd": runs / "tiny" / "model"}
    ablation.main(["--data", test_file, "--model", *[f"{k}={v}" for k, v in models.items()],
                   "--compare", "kd:plain", "--gap", "teacher:plain:kd", "--json", str(tmp_path / "a.json")])
    res = json.loads((tmp_path / "a.json").read_text())
    tiny = json.loads((runs / "tiny" / "metrics.json").read_text())
    assert res["models"]["kd"]["accuracy"] == pytest.approx(tiny["test"]["accuracy"])
    assert res["models"]["plain"]["accuracy"] == pytest.approx(tiny["baseline"]["test"]["accuracy"])
    n = res["models"]["kd"]["n"]
    kd_only, plain_only = res["compare"]["kd:plain"]["right_only"]
    assert (kd_only - plain_only) / n == pytest.approx(res["models"]["kd"]["accuracy"] - res["models"]["plain"]["accuracy"])
    gap = res["gap"]["teacher:plain:kd"]
    lead = res["models"]["teacher"]["accuracy"] - res["models"]["plain"]["accuracy"]
    assert gap["teacher_lead"] == pytest.approx(lead)
    if lead > 0:
        assert gap["closed"] == pytest.approx((res["models"]["kd"]["accuracy"] - res["models"]["plain"]["accuracy"]) / lead)
    else:
        assert gap["closed"] is None
    with pytest.raises(SystemExit, match="expected 2 of the --model names"):
        ablation.main(["--data", test_file, "--model", f"kd={models['kd']}", "--compare", "kd:nobody"])
