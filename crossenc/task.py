"""finetune, evaluate and predict: the cross-encoder tasks."""

from __future__ import annotations

import logging
from pathlib import Path

from common.files import write_json
from crossenc.model import CrossEncoder
from crossenc.predict import model_path, predict, read_unlabelled  # noqa: F401  (predict moved: TF-free)
from data import DataError
from modeling.model_dir import load_model_dir
from training.inputs import init_encoder, read_data, tokenize
from training.metrics import PER_PAIR
from training.rundir import check_out
from training.runner import TrainingTask, format_scores, run
from training.trainer import evaluator

log = logging.getLogger(__name__)


def build_cross_encoder(cfg, model_cfg, splits, run_dir):
    """A cross-encoder on `model_cfg`'s encoder with `cfg.model`'s head settings (finetune, distill's student)."""
    encoder, tokenizer = init_encoder(model_cfg, splits.train.text_a + splits.train.text_b, run_dir)
    model = CrossEncoder(encoder, num_labels=len(splits.label_names), pooling=cfg.model.pooling,
                         dropout=cfg.model.dropout, name="cross_encoder")
    if model_cfg.init is not None and model.pooling == "cls" and encoder.pooler is not None:
        load_hf_head(model, model_cfg.init, splits.label_names)
    return model, tokenizer


def load_hf_head(model, init, labels):
    """Start `model`'s classifier from a BertForSequenceClassification checkpoint's (model.init, e.g. an
    hf export) when that head has the data's labels in the same order; else it starts random (logged).
    Our cls head is that model's head (CrossEncoder.hf_head), so the weights mean the same here."""
    from modeling.checkpoints import read_hf_classifier
    from modeling.pretrained import resolve

    head = read_hf_classifier(resolve(init))
    if head is None:
        return False
    names, kernel, bias = head
    if names != [str(n) for n in labels] or kernel.shape[0] != model.encoder.hidden_size:
        log.info("model.init's classifier not loaded: its labels %s are not the data's %s (the head starts random)",
                 names, list(labels))
        return False
    model(model.dummy_inputs())
    model.classifier.kernel.assign(kernel)
    model.classifier.bias.assign(bias)
    log.info("classifier loaded from model.init (labels %s)", names)
    return True


class Finetune(TrainingTask):
    """Fine-tune a cross-encoder on the labels."""

    def build(self, run_dir, splits):
        return build_cross_encoder(self.cfg, self.cfg.model, splits, run_dir)


def finetune(cfg):
    """Fine-tune a cross-encoder; writes <out>/model, metrics.json, config.yaml, tensorboard/."""
    return run(Finetune(cfg))


def evaluate(cfg):
    """A model directory on a labelled file -> metrics and a confusion matrix (printed, and JSON with --out)."""
    check_out("evaluate", cfg.out)  # never over a training run's metrics.json
    loaded = load_model_dir(model_path(cfg))
    path = cfg.data.test or cfg.data.valid
    if path is None:
        raise DataError("set data.test (or data.valid) to the labelled file to evaluate on")
    pairs = read_data(cfg, path, loaded.labels, labels_name=f"the model's labels ({loaded.path / 'model.json'})")
    split = tokenize(loaded.model, loaded.tokenizer, pairs, loaded.labels, loaded.max_seq_len, "eval")
    threshold = loaded.threshold
    if threshold is None and not loaded.has_classifier:
        log.warning("%s: no cosine threshold recorded (its run's metrics.json): the best on %s itself is "
                    "used, an optimistic one", loaded.path, path)
    metrics = evaluator(loaded.labels, cfg.train.eval_batch_size, threshold)(loaded.model, split, final=True)
    metrics.pop(PER_PAIR, None)
    print(f"{path} (n={metrics['n']}): {format_scores(metrics)}")
    cm = metrics.get("confusion_matrix")  # none for a graded scale scored by cosine
    if cm:
        rule = "" if loaded.has_classifier else f", by cosine > {metrics['cosine_threshold']:.4f}"
        print(f"confusion matrix (rows = true, columns = predicted{rule}):")
        width = max(len(n) for n in cm["labels"]) + 2
        print(" " * width + "".join(n.rjust(width) for n in cm["labels"]))
        for name, row in zip(cm["labels"], cm["matrix"]):
            print(name.rjust(width) + "".join(str(c).rjust(width) for c in row))
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(cfg.out) / "metrics.json", {"eval": metrics, "model": str(model_path(cfg)), "data": path,
                                                    "skipped_rows": dict(pairs.skip_reasons)})
    return metrics
