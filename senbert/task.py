"""sbert and embed tasks: train a Sentence-BERT bi-encoder; texts -> embeddings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from data import DataError, read_texts
from modeling.model_dir import load_model_dir
from runtime.progress import progress_bar
from senbert.model import SentenceBert
from training.metrics import classification_metrics, positive_index, with_uncertainty
from training.inputs import init_encoder
from training.runner import TrainingTask, run
from training.trainer import predict_outputs

log = logging.getLogger(__name__)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def class_targets(label_names):
    """Cosine targets per class: scaled values for graded numeric labels, else 1 for the positive class."""
    if len(label_names) > 2 and all(_is_number(n) for n in label_names):
        vals = np.array([float(n) for n in label_names])
        return list((vals - vals.min()) / max(vals.max() - vals.min(), 1e-9)), True
    pos = positive_index(label_names)
    return [1.0 if i == pos else 0.0 for i in range(len(label_names))], False


def best_threshold(cos, positive):
    """The cosine threshold maximising accuracy (ties: the higher F1), searched over midpoints."""
    order = np.sort(np.unique(cos))
    cands = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    best = None
    for t in cands:
        pred = cos > t
        acc = float(np.mean(pred == positive))
        tp = float(np.sum(pred & positive))
        f1 = 2 * tp / max(np.sum(pred) + np.sum(positive), 1)
        if best is None or (acc, f1) > best[:2]:
            best = (acc, f1, float(t))
    return best


def sbert_evaluator(label_names, batch_size, graded):
    """Bi-encoder metrics. The cosine threshold is chosen on the `valid` split and reused for `test`."""
    pos = positive_index(label_names)
    targets = np.asarray(class_targets(label_names)[0])
    state = {"threshold": None}

    def evaluate(model, split, final=False):
        out = predict_outputs(model, split.features, batch_size)
        cos = out["cosine"]
        metrics = {"n": int(len(cos))}
        if "probs" in out:
            metrics = classification_metrics(split.labels, out["probs"], label_names)
            if final:  # the classifier's metrics get intervals; the cosine rule's do not (yet)
                metrics = with_uncertainty(metrics, split.labels, out["probs"], label_names)
        # "Same meaning": the positive class, or the upper half of a graded scale.
        positive = targets[split.labels] >= 0.5 if graded else split.labels == pos
        if split.name == "valid" or state["threshold"] is None:
            state["threshold"] = best_threshold(cos, positive)[2]
        t = state["threshold"]
        pred = cos > t
        tp = float(np.sum(pred & positive))
        metrics.update(cosine_threshold=t, cosine_accuracy=float(np.mean(pred == positive)),
                       cosine_f1=2 * tp / max(float(np.sum(pred) + np.sum(positive)), 1.0))
        if 0 < positive.sum() < len(positive):
            metrics["cosine_auc"] = float(roc_auc_score(positive, cos))
        if graded:
            metrics["spearman"] = float(spearmanr(cos, targets[split.labels]).statistic)
        return metrics

    return evaluate


class Sbert(TrainingTask):
    """A Sentence-BERT bi-encoder on the labels (softmax head, cosine regression or in-batch negatives)."""

    section = "sbert"

    def decide(self, splits):
        self.targets, self.graded = class_targets(splits.label_names)

    def selection_metric(self, label_names):
        m = self.cfg.train.metric
        if self.cfg.sbert.objective != "softmax" and m in ("accuracy", "f1", "auc"):
            return f"cosine_{m}"  # no classifier: select on the cosine rule
        return super().selection_metric(label_names)

    def settings(self):
        s = self.cfg.sbert
        return {"objective": s.objective, "pooling": s.pooling, "normalize": s.normalize}

    def build(self, run_dir, splits):
        cfg, s = self.cfg, self.cfg.sbert
        encoder, tokenizer = init_encoder(cfg.model, splits.train.text_a + splits.train.text_b, run_dir)
        return SentenceBert(encoder, num_labels=len(splits.label_names), objective=s.objective, pooling=s.pooling,
                            normalize=s.normalize, scale=s.scale, positive_index=positive_index(splits.label_names),
                            targets=self.targets, dropout=cfg.model.dropout, name="sbert"), tokenizer

    def evaluator(self, splits):
        return sbert_evaluator(splits.label_names, self.cfg.train.eval_batch_size, self.graded)


def train_sbert(cfg):
    """Fine-tune a bi-encoder; writes <out>/model (kind sbert) and metrics.json."""
    return run(Sbert(cfg))


def embed(cfg):
    """Texts -> `<out>/embeddings.npy` + `<out>/ids.txt`, with the model's own pooling and normalisation."""
    import tensorflow as tf

    from training.pipeline import make_dataset

    if cfg.model.init in (None, "minilm"):
        raise DataError("set model.init to an sbert model directory")
    loaded = load_model_dir(cfg.model.init, expect_kind="sbert")
    ids, texts = read_texts(cfg.data.test or "-")
    out = Path(cfg.out or "embeddings")
    out.mkdir(parents=True, exist_ok=True)
    feats = {"input_ids": loaded.tokenizer.encode_texts(texts, loaded.max_seq_len)}
    batch = 64
    encode = tf.function(lambda x: loaded.model.encode(x["input_ids"], x["attention_mask"]), reduce_retracing=True)
    chunks = []
    with progress_bar(len(texts), "embedding", "text") as bar:
        for x in make_dataset(feats, batch_size=batch, bucket=False):
            chunks.append(encode(x).numpy())
            bar.update(len(chunks[-1]))
    emb = np.concatenate(chunks).astype(np.float32)
    np.save(out / "embeddings.npy", emb)
    (out / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    (out / "embeddings.json").write_text(json.dumps({"model": str(cfg.model.init), "n": len(ids), "dim": emb.shape[1],
                                                     "pooling": loaded.model.pooling,
                                                     "normalize": loaded.model.normalize}, indent=2))
    print(f"{len(ids)} embeddings ({emb.shape[1]} dims) -> {out / 'embeddings.npy'}")
    return emb
