"""The README's quick start on a user's own small CSV, at the defaults: `finetune` with the `data.*` keys,
then `evaluate` and `predict` given only the model directory and a test file (the model's data contract
supplies the columns). The model must separate its classes: under the old 2-epoch default such a file got
18 optimizer steps and every test pair scored p between 0.43 and 0.56 (issue 26).

The embedded MiniLM-L6 (the quick start's model) on 64 generated pairs whose negatives change topic, the
smallest file on which the default schedule is what decides (about 75 s of CPU); only the sizes the suite
needs are set (`train.batch_size=16` so 64 rows make 4 batches, `train.max_seq_len=24`).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import run_tasks
from data.sample import make_sample

COLUMNS = ("question", "candidate", "is_same")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    files = make_sample(root / "data", n_train=64, n_valid=32, n_test=32, seed=11, columns=COLUMNS,
                        easy_negatives=1.0)
    assert run_tasks.main(["--task", "finetune", "--out", str(root / "run"), "--set",
                           f"data.train={files['train']}", f"data.valid={files['valid']}",
                           f"data.test={files['test']}", "data.text_a=question", "data.text_b=candidate",
                           "data.label=is_same", "train.batch_size=16", "train.max_seq_len=24",
                           "train.verbose=0"]) == 0
    return root, files


def test_the_default_schedule_trains_a_small_file_long_enough(quick):
    root, _ = quick
    m = json.loads((root / "run" / "metrics.json").read_text())
    assert m["training"]["planned_steps"] >= 100  # 4 steps an epoch: the rule gives 25 epochs, not 3
    assert "warnings" not in m, m.get("warnings")
    assert m["test"]["accuracy"] >= 0.8 and m["test"]["auc"] >= 0.9 and m["test"]["spread"] >= 0.5


def test_evaluate_and_predict_need_only_the_model_and_separate_the_classes(quick, capsys):
    root, files = quick
    model = root / "run" / "model"
    assert run_tasks.main(["--task", "evaluate", "--out", str(root / "eval"), "--set", f"model.init={model}",
                           f"data.test={files['test']}"]) == 0
    again = json.loads((root / "eval" / "metrics.json").read_text())
    trained = json.loads((root / "run" / "metrics.json").read_text())
    assert again["eval"]["accuracy"] == pytest.approx(trained["test"]["accuracy"])  # the same model and file

    out = root / "scores.csv"
    assert run_tasks.main(["--task", "predict", "--out", str(out), "--set", f"model.init={model}",
                           f"data.test={files['test']}"]) == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))  # in input order; "label" is the predicted one
    gold = list(csv.DictReader(open(files["test"], encoding="utf-8")))
    assert [(r["text_a"], r["text_b"]) for r in rows] == [(g["question"], g["candidate"]) for g in gold]
    labels = np.array([g["is_same"] for g in gold])
    p1 = np.array([float(r["p_1"]) for r in rows])
    assert set(labels) == {"0", "1"}
    # separated: the positives' mean probability of "same meaning" far above the negatives'
    assert p1[labels == "1"].mean() - p1[labels == "0"].mean() > 0.5
