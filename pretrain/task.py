"""pretrain task: MLM pre-training on in-domain sentences; its model directory feeds every other task.

    python run_tasks.py --task pretrain --set data.text='[../shared/data/bq/train.csv]' model.vocab_lang=zh
    python run_tasks.py --task finetune --set model.init=runs/pretrain/<stamp>/model ...

Text comes from plain-text files (one sentence per line) and/or both sentence
columns of pair files (de-duplicated). With `model.init: null` a vocabulary is
built from it; a checkpoint in `model.init` is pre-trained further instead.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from data import DataError, PairData, read_pairs
from pretrain.model import MaskedLM, masked_lm_loss
from training.pipeline import make_dataset
from training.inputs import Splits, init_encoder, sample_dir
from training.runner import TrainingTask, run

log = logging.getLogger(__name__)

PAIR_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def _existing(src):
    path = Path(src)
    if not path.is_file():
        raise DataError(f"{src}: not found")
    return path


def _read_pair_file(cfg, src):
    """A pair file's texts as data.* describes its columns; labels are not needed for MLM."""
    d = cfg.data
    return read_pairs(src, format=d.format, text_a=d.text_a, text_b=d.text_b, label=None, on_bad_row=d.on_bad_row)


def read_sentences(cfg):
    """Sentences from data.text (or data.train, or the sample data), de-duplicated, in first-seen order."""
    sources = list(cfg.data.text) or ([cfg.data.train] if cfg.data.train else [])
    if not sources:
        from data import make_sample

        sources = [str(make_sample(sample_dir(cfg), seed=0)["train"])]
        log.info("no data.text given: pre-training on the generated sample sentences")
    seen = {}
    for src in sources:
        path = _existing(src)
        if path.suffix.lower() in PAIR_SUFFIXES:
            pairs = _read_pair_file(cfg, src)
            texts = pairs.text_a + pairs.text_b
        else:
            try:
                texts = [t.strip() for t in path.read_text(encoding="utf-8").splitlines()]
            except UnicodeDecodeError as e:
                raise DataError(f"{src}: not UTF-8 ({e.reason} at byte {e.start})") from None
        for t in texts:
            if t:
                seen.setdefault(t, None)
        if cfg.data.max_rows and len(seen) >= cfg.data.max_rows:
            break
    sentences = list(seen)[: cfg.data.max_rows or None]
    if len(sentences) < 10:
        raise DataError(f"{', '.join(sources)}: only {len(sentences)} distinct sentences")
    return sentences


def read_text_pairs(cfg):
    """`pretrain.pairs`: the (a, b) rows of the pair files in data.text, de-duplicated, labels unused."""
    seen = {}
    for src in cfg.data.text:
        if _existing(src).suffix.lower() not in PAIR_SUFFIXES:
            raise DataError(f"{src}: pretrain.pairs=true needs pair files ({', '.join(PAIR_SUFFIXES)}), "
                            "not plain text")
        rows = _read_pair_file(cfg, src)
        for a, b in zip(rows.text_a, rows.text_b):
            if a and b:
                seen.setdefault((a, b), None)
        if cfg.data.max_rows and len(seen) >= cfg.data.max_rows:
            break
    pairs = list(seen)[: cfg.data.max_rows or None]
    if len(pairs) < 10:
        raise DataError(f"{', '.join(map(str, cfg.data.text))}: only {len(pairs)} distinct pairs")
    return [a for a, _ in pairs], [b for _, b in pairs]


def mlm_evaluator(batch_size, seed=1234):
    """Masked-token loss, accuracy and perplexity with a fixed mask (comparable across epochs)."""
    def evaluate(model, split, final=False):  # final: no interval for the MLM scores
        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        total, correct, loss_sum = 0.0, 0.0, 0.0
        for x, y in make_dataset(split.features, batch_size=batch_size, seed=seed, bucket=False,
                                 transform=model.batch_transform):
            logits = fn(x)
            sel = (y >= 0).numpy()
            n = float(sel.sum())
            if n:
                loss_sum += float(masked_lm_loss(y, logits)) * n
                correct += float((tf.argmax(logits, -1, output_type=tf.int32).numpy() == y.numpy())[sel].sum())
                total += n
        loss = loss_sum / max(total, 1.0)
        return {"loss": loss, "mlm_accuracy": correct / max(total, 1.0), "perplexity": math.exp(min(loss, 50.0)),
                "n": int(len(split)), "masked_tokens": int(total)}
    return evaluate


class Pretrain(TrainingTask):
    """Masked-LM pre-training on single texts or pairs; selects on the held-out MLM loss."""

    section = "pretrain"

    def read_splits(self):
        cfg, p = self.cfg, self.cfg.pretrain
        if p.pairs and not cfg.data.text:
            raise DataError("pretrain.pairs=true needs data.text: pair files whose rows become the inputs")
        # Single texts (text_b None) or pairs; the held-out slice is drawn the same way for both.
        text_a, text_b = read_text_pairs(cfg) if p.pairs else (read_sentences(cfg), None)
        self.sentences = text_a + (text_b or [])  # what the vocabulary is built from
        self.unit, self.count = ("pairs" if p.pairs else "sentences"), len(text_a)
        rng = np.random.default_rng(cfg.train.seed)
        order = rng.permutation(len(text_a))
        n_valid = min(5000, max(10, int(round(cfg.data.valid_fraction * len(text_a)))))

        def pick(idx):
            return PairData([text_a[i] for i in idx], None if text_b is None else [text_b[i] for i in idx], None,
                            [int(i) for i in idx])

        splits = Splits(train=pick(np.sort(order[n_valid:])), valid=pick(np.sort(order[:n_valid])), test=None,
                        label_names=[])
        log.info("pre-training on %d %s, %d held out for MLM metrics", len(splits.train), self.unit,
                 len(splits.valid))
        return splits

    def selection_metric(self, label_names):
        return "loss"  # MLM has no classification metric

    def settings(self):
        p = self.cfg.pretrain
        return {self.unit: self.count, "whole_word": p.whole_word, "mask_rate": p.mask_rate, "pairs_input": p.pairs}

    def build(self, run_dir, splits):
        p = self.cfg.pretrain
        encoder, tokenizer = init_encoder(self.cfg.model, self.sentences, run_dir)
        specials = sorted({tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id})
        return MaskedLM(encoder, special_ids=specials, mask_id=tokenizer.mask_id, rate=p.mask_rate,
                        whole_word=p.whole_word, name="mlm"), tokenizer

    def evaluator(self, splits):
        return mlm_evaluator(self.cfg.train.eval_batch_size)

    def summary(self, run_dir, metrics):
        v = metrics.get("valid", {})
        print(f"held-out MLM: loss {v.get('loss', float('nan')):.4f}, accuracy {v.get('mlm_accuracy', 0):.4f}, "
              f"perplexity {v.get('perplexity', float('nan')):.1f}")
        print(f"model directory: {Path(run_dir) / 'model'}  (use it as model.init)")


def pretrain(cfg):
    """MLM pre-training; writes <out>/model (kind mlm, loadable by every task via model.init)."""
    return run(Pretrain(cfg))
