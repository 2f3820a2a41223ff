"""Every model kind through every task that takes a model directory, as a matrix.

The README promises that evaluate and predict take any model kind; embed, index and the teacher and
baseline keys take some. Each (kind, task) cell either works or is refused naming the kind and what
the task accepts. The models are untrained tiny ones (1 layer, hidden 32), built once for the module;
an sbert model without a classifier labels a pair by cosine against the threshold its run chose on
valid (the `cosine_threshold` of the run's metrics.json, beside the model directory).
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

import run_tasks
from tests.tiny_runs import make_data

# kind name in the matrix -> (model class kind, sbert objective or None)
KINDS = {"cross_encoder": ("cross_encoder", None), "sbert_softmax": ("sbert", "softmax"),
         "sbert_cosine": ("sbert", "cosine"), "sbert_mnrl": ("sbert", "mnrl"), "virt": ("virt", None)}
THRESHOLD = 0.25  # what the fake sbert runs "chose on valid"


def _build(kind, objective, vocab_size):
    from crossenc.model import CrossEncoder
    from modeling.encoder import BertEncoder
    from senbert.model import SentenceBert
    from virt.model import VirtModel

    enc = BertEncoder(vocab_size=vocab_size, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64,
                      max_position=64, name="encoder")
    if kind == "cross_encoder":
        model = CrossEncoder(enc, 2, name="cross_encoder")
    elif kind == "sbert":
        model = SentenceBert(enc, 2, objective=objective, name="sbert")
    else:
        model = VirtModel(enc, 2, name="virt")
    model(model.dummy_inputs())
    return model


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """Data and one model directory per kind, `<root>/runs/<kind>/model` (sbert runs with a metrics.json)."""
    import keras

    from modeling.model_dir import save_model_dir
    from modeling.tokenization import PairTokenizer

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("kinds")
    data = make_data(root / "data", n_train=32, n_valid=16, with_test=True)
    tok = PairTokenizer(data["vocab"])
    dirs = {}
    for name, (kind, objective) in KINDS.items():
        run = root / "runs" / name
        dirs[name] = save_model_dir(_build(kind, objective, tok.vocab_size), run / "model", tok, labels=["0", "1"],
                                    max_seq_len=16)
        if kind == "sbert":
            (run / "metrics.json").write_text(json.dumps({"valid": {"cosine_threshold": THRESHOLD}}))
    texts = root / "texts.txt"
    texts.write_text("how old are you\nwhere do you live\n", encoding="utf-8")
    return {"root": root, "data": data, "dirs": dirs, "texts": texts}


def _main(capsys, *args):
    capsys.readouterr()
    rc = run_tasks.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _error(err):
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# task -> the kinds it refuses, and what its refusal must say (besides the kind's name)
REFUSED = {
    "evaluate": ({}, None),
    "predict": ({}, None),
    "embed": ({"cross_encoder", "virt"}, "sbert"),
    "index": ({"cross_encoder"}, "expected sbert or virt"),
    "baseline": ({"sbert_cosine", "sbert_mnrl"}, "class probabilities"),
    "teacher": ({"sbert_softmax", "sbert_cosine", "sbert_mnrl", "virt"}, "cross_encoder"),
}


def _run(task, kinds, name, capsys, tmp_path):
    """Run `task` with `name`'s model directory; returns (rc, stdout, stderr) or raises what it raises."""
    d, data = kinds["dirs"][name], kinds["data"]
    out, *sets = {"evaluate": ("eval", f"model.init={d}", f"data.test={data['test']}"),
                  "predict": ("scores.csv", f"model.init={d}", f"data.test={data['test']}"),
                  "embed": ("emb", f"model.init={d}", f"data.test={kinds['texts']}"),
                  "index": ("index", f"index.model={d}", f"index.corpus={kinds['texts']}")}[task]
    return _main(capsys, "--task", task, "--out", tmp_path / out, "--set", *sets)


def _in_process(task, kinds, name):
    """The baseline (virt.baseline, distill.baseline) and teacher (distill.teacher, virt.teacher) keys,
    called where the tasks call them (training them would cost minutes)."""
    from config import load_config
    from training.inputs import load_splits

    data, d = kinds["data"], kinds["dirs"][name]
    cfg = load_config(None, ["task=virt", f"data.train={data['train']}", f"data.valid={data['valid']}",
                             f"data.test={data['test']}", "train.max_seq_len=16", f"virt.teacher={d}",
                             f"virt.baseline={d}"])
    if task == "baseline":
        from training.references import score_model_dir

        return score_model_dir(d, load_splits(cfg), cfg, key="virt.baseline")
    from crossenc.teacher import teacher_for

    return teacher_for(cfg, kinds["root"], "virt")


@pytest.mark.parametrize("name", list(KINDS))
@pytest.mark.parametrize("task", list(REFUSED))
def test_every_kind_through_every_task_that_takes_a_model(kinds, capsys, tmp_path, task, name):
    refused, says = REFUSED[task]
    kind = KINDS[name][0]
    if task in ("baseline", "teacher"):
        if name in refused:
            with pytest.raises(Exception) as e:
                _in_process(task, kinds, name)
            message = str(e.value)
            assert f"a {kind} model" in message and says in message and f"virt.{task}" in message, message
        else:
            result = _in_process(task, kinds, name)
            if task == "baseline":
                assert set(result) == {"valid", "test"} and 0 <= result["test"]["accuracy"] <= 1
        return
    rc, out, err = _run(task, kinds, name, capsys, tmp_path)
    if name in refused:
        line = _error(err)
        assert rc == 1 and f"a {kind} model" in line and says in line, line
        return
    assert rc == 0, err
    if task == "evaluate":
        metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["eval"]
        key = "accuracy" if name not in ("sbert_cosine", "sbert_mnrl") else "cosine_accuracy"
        assert metrics["n"] == 16 and 0 <= metrics[key] <= 1
        assert "confusion matrix" in out
    elif task == "predict":
        header, *rows = csv.reader(io.StringIO((tmp_path / "scores.csv").read_text()))
        assert len(rows) == 16 and all(r[2] in ("0", "1") for r in rows)
        if name in ("sbert_cosine", "sbert_mnrl"):
            assert header == ["text_a", "text_b", "label", "cosine"]
            cos, labels = np.array([float(r[3]) for r in rows]), np.array([r[2] for r in rows])
            assert np.array_equal(labels == "1", cos > THRESHOLD)  # the run's threshold decides
        else:
            assert header[:5] == ["text_a", "text_b", "label", "p_0", "p_1"]
