"""sbert and embed tasks: train a Sentence-BERT bi-encoder; texts -> embeddings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from common.labels import class_targets, positive_index
from data import DataError, read_texts
from modeling.model_dir import load_model_dir
from runtime.progress import progress_bar
from senbert.model import SentenceBert
from training.inputs import init_encoder
from training.runner import TrainingTask, run

log = logging.getLogger(__name__)


class Sbert(TrainingTask):
    """A Sentence-BERT bi-encoder on the labels (softmax head, cosine regression or in-batch negatives)."""

    section = "sbert"

    @property
    def min_classes(self):
        return 1 if self.cfg.sbert.objective == "mnrl" else 2  # MNRL learns from positive pairs alone

    def decide(self, splits):
        self.targets = class_targets(splits.label_names)[0]

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
