"""bench/accuracy_table.py: the rows it trains compare what their names say."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import accuracy_table  # noqa: E402
from config import load_config  # noqa: E402


def resolved(task, row_overrides, common=()):
    """The config a row's run would see: task YAML, then --set, then the row's own keys (as command() orders them)."""
    argv = accuracy_table.command(task, Path("runs/x"), ["data.train=t.csv"], list(common), row_overrides)
    sets = argv[argv.index("--set") + 1:]
    return load_config(ROOT / "config" / f"{task}.yaml", sets)


def test_large_rows_use_the_full_encoder_unless_told():
    # virt.yaml's demo student keeps 3 layers; a table row called "large" must not inherit that.
    for name, task, overrides, dirname in accuracy_table.runs("out", None, 2):
        cfg = resolved(task, overrides)
        if dirname in ("ce_tiny", "distilled_tiny"):
            assert cfg.model.num_layers == 2, dirname
        else:
            assert cfg.model.num_layers is None, (dirname, cfg.model.num_layers)
    for name, task, overrides, dirname in accuracy_table.runs("out", 4, 1):
        expected = 1 if dirname in ("ce_tiny", "distilled_tiny") else 4
        assert resolved(task, overrides).model.num_layers == expected, dirname


def test_row_keys_win_over_common_overrides_and_scratch_row_is_random_init():
    rows = {d: (t, o) for _, t, o, d in accuracy_table.runs("out", None, 2, scratch=["model.init=null", "model.num_layers=4"])}
    common = ["model.init=runs/mlm/model", "model.num_layers=6", "train.epochs=3"]
    task, overrides = rows["ce_scratch"]
    cfg = resolved(task, overrides, common)
    assert cfg.model.init is None and cfg.model.num_layers == 4 and cfg.train.epochs == 3
    task, overrides = rows["ce_tiny"]
    assert resolved(task, overrides, common).model.num_layers == 2
    assert resolved(*rows["virt"], common).virt.teacher == "out/ce_large/model"
    fusion = resolved(*rows["virt_fusion"], common).virt
    assert fusion.fusion is True and fusion.adapted_interaction is False and fusion.distill is True
    plain = resolved(*rows["virt_adapted_plain_head"], common).virt
    assert plain.fusion is False and plain.adapted_interaction is True and plain.distill is True


def test_students_score_the_tables_own_baseline_rows_trained_before_them():
    order = [d for _, _, _, d in accuracy_table.runs("out", None, 2)]
    rows = {d: (t, o) for _, t, o, d in accuracy_table.runs("out", None, 2)}
    for d in ("virt", "virt_no_adapted", "virt_fusion", "virt_adapted_plain_head"):
        assert resolved(*rows[d]).virt.baseline == "out/siamese/model" and order.index("siamese") < order.index(d)
    assert resolved(*rows["distilled_tiny"]).distill.baseline == "out/ce_tiny/model"
    assert order.index("ce_tiny") < order.index("distilled_tiny")


def test_bi_encoder_metrics_give_a_classifier_row_and_a_cosine_row():
    m = {"valid": {"accuracy": 0.7, "cosine_accuracy": 0.65},
         "test": {"accuracy": 0.71, "f1": 0.8, "auc": 0.75, "cosine_accuracy": 0.66, "cosine_f1": 0.78,
                  "cosine_auc": 0.74, "cosine_threshold": 0.8123},
         "training": {"best_epoch": 2}}
    rows = accuracy_table.table_rows("sbert", m, "12")
    assert [r["model"] for r in rows] == ["sbert", "sbert, cosine > 0.81"]
    assert rows[1]["accuracy"] == 0.66 and rows[1]["valid_accuracy"] == 0.65 and rows[1]["auc"] == 0.74
    assert all(r["split"] == "test" and r["epochs"] == 2 for r in rows)
    # a cross-encoder has no cosine rule; without a test split the valid split is reported
    only = accuracy_table.table_rows("ce", {"valid": {"accuracy": 0.5, "f1": 0.6}})
    assert len(only) == 1 and only[0]["split"] == "valid" and only[0]["accuracy"] == 0.5
