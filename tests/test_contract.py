"""A model directory's data contract and its model card (issue 26, items 2 and 5).

One tiny finetune on a csv with its own column names (question, candidate, is_same), then the later
tasks without those keys; the checks of the pair files' columns before TensorFlow starts (a model
directory there is only its model.json: nothing is loaded); the card against the run's files.
"""

import hashlib
import json
import logging
import subprocess

import pytest

import run_tasks
from config import given_keys, load_config
from data import DataError, PairData, check_columns, read_header, read_pairs
from tests.tiny_runs import PYTHON, make_data, tiny_overrides, write_csv
from training.card import render_card, write_card
from training.contract import apply_contract, data_block, read_contract
from training.inputs import Splits

COLUMNS = ("question", "candidate", "is_same")


def _renamed_csv(src, dst, header=COLUMNS, label=None):
    """`src` (a sample csv) with the columns `header`, every label replaced by `label` when given."""
    p = read_pairs(src)
    return write_csv(dst, list(zip(p.text_a, p.text_b, [label or y for y in p.labels])), header)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finetune on files with the columns COLUMNS: (run dir, {split: file}, the same files with the
    default columns)."""
    tmp = tmp_path_factory.mktemp("contract")
    data = make_data(tmp / "data", n_train=64, n_valid=16, n_test=12, with_test=True)
    files = {k: _renamed_csv(data[k], tmp / f"{k}.csv") for k in ("train", "valid", "test")}
    sets = tiny_overrides(None, data["vocab"], "train.epochs=1", "train.steps_per_epoch=2",
                          *(f"data.{k}={v}" for k, v in files.items()),
                          *(f"data.{k}={c}" for k, c in zip(("text_a", "text_b", "label"), COLUMNS)))
    run = tmp / "run"
    assert run_tasks.main(["--task", "finetune", "--out", str(run), "--set", *sets]) == 0
    return run, files, data


# ============================================================================ model.json's data block
def test_model_json_records_the_data_contract_and_the_command(trained):
    run, files, _ = trained
    meta = json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))
    block = meta["data"]
    assert (block["format"], block["text_a"], block["text_b"], block["label"]) == ("auto", *COLUMNS)
    assert block["labels"] == meta["labels"] == ["0", "1"]
    assert {k: (f["path"], f["rows"]) for k, f in block["files"].items()} == {
        "train": (files["train"], 64), "valid": (files["valid"], 16), "test": (files["test"], 12)}
    for split, f in block["files"].items():
        with open(files[split], "rb") as fh:
            assert f["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert meta["init"] is None
    assert meta["command"].startswith("python run_tasks.py --task finetune --out ") and "data.label=is_same" in meta["command"]


def test_rows_count_source_lines_once_and_a_held_out_valid_says_so(tmp_path):
    """Swap augmentation repeats every row and a held-out valid has no file of its own."""
    train = write_csv(tmp_path / "t.csv", [("a", "b", "0"), ("c", "d", "1")])
    cfg = load_config(None, [f"data.train={train}"])
    pairs = PairData(["a", "c", "b", "d"], ["b", "d", "a", "c"], ["0", "1", "0", "1"], [2, 3, 2, 3])
    held = PairData(["a"], ["b"], ["0"], [2])
    block = data_block(cfg, Splits(pairs, held, None, ["0", "1"]))
    assert block["files"]["train"]["rows"] == 2
    assert block["files"]["valid"] == {"path": None, "rows": 1, "held_out_from": "train", "fraction": 0.1}
    assert data_block(cfg, Splits(pairs, held, None, [])) is None  # pretrain: no labels, no contract


# ============================================================================ reuse
def test_evaluate_and_predict_take_the_columns_from_the_model(trained, tmp_path, capsys, caplog):
    """The user's report: evaluate after a finetune on other column names failed with
    "column 'sentence1' not found"; now the model's keys are used and one line says so."""
    run, files, _ = trained
    model = run / "model"
    with caplog.at_level(logging.INFO, logger="training.contract"):
        assert run_tasks.main(["--task", "evaluate", "--out", str(tmp_path / "eval"), "--set", f"model.init={model}",
                               f"data.test={files['test']}"]) == 0
    taken = [r.getMessage() for r in caplog.records if r.name == "training.contract"]
    assert taken == [f"taken from the model's data contract ({model / 'model.json'}): data.format=auto, "
                     f"data.text_a=question, data.text_b=candidate, data.label=is_same"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["eval"]["n"] == 12
    out = tmp_path / "pred.csv"
    assert run_tasks.main(["--task", "predict", "--out", str(out), "--set", f"model.init={model}",
                           f"data.test={files['test']}"]) == 0
    assert len(out.read_text().splitlines()) == 13


def test_given_keys_win_over_the_model(trained, tmp_path, capsys):
    run, files, sample = trained
    test = _renamed_csv(sample["test"], tmp_path / "other.csv", header=("q", "candidate", "is_same"))
    assert run_tasks.main(["--task", "evaluate", "--set", f"model.init={run / 'model'}", f"data.test={test}",
                           "data.text_a=q"]) == 0
    assert "(n=12): accuracy " in capsys.readouterr().out
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  text_a: q\n", encoding="utf-8")  # --config counts as given too
    cfg = load_config(cfg_file, [f"model.init={run / 'model'}", "task=evaluate"])
    origins = apply_contract(cfg, run / "model", given_keys(cfg_file, []))
    assert (cfg.data.text_a, cfg.data.text_b, origins["text_a"]) == ("q", "candidate", "as given")


def test_a_label_outside_the_models_labels_names_file_line_and_labels(trained, tmp_path, capsys):
    run, _, sample = trained
    bad = _renamed_csv(sample["test"], tmp_path / "bad.csv", label="yes")
    assert run_tasks.main(["--task", "evaluate", "--set", f"model.init={run / 'model'}", f"data.test={bad}"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {bad}:2: label 'yes' is not one of the model's labels ({run / 'model' / 'model.json'}) ['0', '1']")


def test_a_model_without_a_contract_keeps_the_defaults(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"format": "textmatch-model", "kind": "cross_encoder"}))
    cfg = load_config(None, ["task=evaluate"])
    origins = apply_contract(cfg, tmp_path, set())
    assert cfg.data.text_a == "sentence1"
    assert origins["text_a"] == f"the default; {tmp_path / 'model.json'} records no data contract"
    assert apply_contract(cfg, "minilm", set())["label"] == "the default"  # not a model directory


def test_a_contract_with_an_invalid_value_is_refused_naming_model_json(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"data": {"format": "xlsx", "text_a": "q"}}))
    with pytest.raises(DataError, match=r"model\.json: data\.format='xlsx' in its data block is not a valid"):
        read_contract(tmp_path)


# ============================================================================ columns, before TensorFlow
def _fake_model(path, **data):
    """A model directory as far as the checks before the task go: model.json alone."""
    path.mkdir(parents=True)
    block = {"format": "auto", "text_a": "question", "text_b": "candidate", "label": "is_same", **data}
    (path / "model.json").write_text(json.dumps({"format": "textmatch-model", "kind": "cross_encoder",
                                                 "labels": ["0", "1"], "data": block}))
    return path


def test_a_missing_column_fails_before_tensorflow_and_writes_nothing(tmp_path):
    model = _fake_model(tmp_path / "model")
    test = write_csv(tmp_path / "test.csv", [("a", "b", "1")], header=("question", "answer", "is_same"))
    code = ("import sys, run_tasks; rc = run_tasks.main(['--task', 'evaluate', '--out', 'ev', '--set', "
            f"'model.init={model}', 'data.test={test}']); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; sys.exit(rc)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(PYTHON), "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(run_tasks.ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {test}:1: column 'candidate' (data.text_b, from {model / 'model.json'}) not found; "
        f"the header has columns ['question', 'answer', 'is_same']")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "test.csv"]  # no ev/, no runs/


@pytest.mark.parametrize("task, sets, message", [
    # the config's default: the model records no contract for these keys
    ("evaluate", ["model.init={model}", "data.test={test}", "data.text_a=sentence1"],
     "{test}:1: column 'sentence1' (data.text_a, as given) not found; the header has columns "
     "['question', 'answer', 'label']"),
    # export's data.test: the label column is optional, the texts are not
    ("export", ["export.model={model}", "data.test={test}"],
     "{test}:1: column 'candidate' (data.text_b, from {model}/model.json) not found; the header has columns "
     "['question', 'answer', 'label']"),
    # index's corpus, a pair file: its texts are the model's text_b column
    ("index", ["index.model={model}", "index.corpus={test}"],
     "{test}:1: column 'candidate' (data.text_b, from {model}/model.json) not found; the header has columns "
     "['question', 'answer', 'label']"),
    # a training run's train file (no model): the defaults
    ("finetune", ["data.train={test}", "data.text_b=answer"],
     "{test}:1: column 'sentence1' (data.text_a, the default) not found; the header has columns "
     "['question', 'answer', 'label']"),
    ("evaluate", ["model.init={model}", "data.test={test}", "data.text_b=answer"],
     "{test}:1: column 'is_same' (data.label, from {model}/model.json) not found; the header has columns "
     "['question', 'answer', 'label']"),
])
def test_a_missing_column_names_where_its_name_came_from(tmp_path, capsys, task, sets, message):
    model = _fake_model(tmp_path / "model")
    test = write_csv(tmp_path / "test.csv", [("a", "b", "1")], header=("question", "answer", "label"))
    out = tmp_path / "out"
    args = [s.format(model=model, test=test) for s in sets]
    assert run_tasks.main(["--task", task, "--out", str(out), "--set", *args]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: " + message.format(model=model, test=test)
    assert not out.exists()


def test_read_header_reads_only_the_first_line(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("q,c,y\n" + "x" * 200_000 + "\n", encoding="utf-8")  # a body read_header never reaches
    assert read_header(big) == ("csv", 1, ["q", "c", "y"])
    jl = tmp_path / "d.jsonl"
    jl.write_text('\n{"q": "a", "c": "b"}\n{"q": "a"}\n', encoding="utf-8")
    assert read_header(jl) == ("jsonl", 2, ["q", "c"])
    with pytest.raises(DataError, match=r"d\.jsonl:2: key 'text' \(data\.text_b\) not found in the first "
                                        r"object; its keys: \['q', 'c'\]"):
        check_columns(jl, "auto", "q", "text", why={"text_b": "data.text_b"})
    lcqmc = tmp_path / "l.txt"
    lcqmc.write_text("a\tb\t1\n", encoding="utf-8")
    assert read_header(lcqmc, "lcqmc") == ("lcqmc", 0, None)
    check_columns(lcqmc, "lcqmc")  # no header: nothing to check
    tsv = tmp_path / "one.tsv"
    tsv.write_text("q,c,y\na,b,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="the header has one column 'q,c,y' — is the delimiter right"):
        check_columns(tsv, "auto", "q", "c")


# ============================================================================ the model card
def test_the_card_of_a_run_holds_its_data_labels_metrics_and_commands(trained):
    run, files, _ = trained
    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    with open(files["train"], "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert f"| train | `{files['train']}` | 64 | `{sha}` |" in card
    assert "| labels (class order) | `0`, `1` |" in card
    assert "| base checkpoint (model.init) | `null (random weights)` |" in card
    assert "| layers | `1` |" in card and "| hidden size | `32` |" in card
    assert "`data.text_a=question`, `data.text_b=candidate`, `data.label=is_same`" in card
    def shown(block, name):  # the value and its recorded 95% interval
        lo, hi = block["ci95"][name]
        return f"{block[name]:.4f} [{lo:.4f}, {hi:.4f}]"

    for name in ("accuracy", "f1"):
        assert f"| {name} | {shown(metrics['valid'], name)} | {shown(metrics['test'], name)} |" in card
    assert "| n (pairs) | 16 | 12 |" in card
    assert (run / "config.yaml").read_text(encoding="utf-8") in card  # the effective configuration
    assert f"Trained with: `{json.loads((run / 'model' / 'model.json').read_text())['command']}`" in card
    assert f"--task export --set export.model={run / 'model'}" in card


def test_the_card_shows_intervals_when_recorded_and_a_failed_card_loses_nothing(trained, tmp_path, caplog):
    run, _, _ = trained
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics["valid"]["ci95"] = {"accuracy": [0.25, 0.75]}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    card = render_card(run / "model", run_dir=tmp_path)
    acc = metrics["valid"]["accuracy"]
    assert f"| accuracy | {acc:.4f} [0.2500, 0.7500] |" in card
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert write_card(tmp_path / "model") is None
    assert "model card not written" in caplog.text
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.json"]  # no README, no temp file
