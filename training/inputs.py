"""What a training run starts from: its data splits (read as the `data.*` keys say), their
tokenisation (cached on disk) and its encoder (a checkpoint or random weights)."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cache import DiskCache, text_pairs
from data import DataError, PairData, check_label_set, label_map, make_sample, read_pairs, swap_augment
from data.readers import read_data, subset  # noqa: F401  (moved: the TF-free predict of an export reads with them)
from modeling.encoder import BertEncoder
from modeling.pretrained import load_pretrained, rebuild_encoder
from modeling.tokenization import IDS_VERSION, PairTokenizer
from training.rundir import RunError
from training.strategy import in_cluster
from training.trainer import Split

log = logging.getLogger(__name__)

# A teacher-labelled transfer pair's label index (training/transfer.py): out of every class range,
# so a CE that read it would fail.
NO_LABEL = -1


def sample_dir(cfg):
    """Where a run without data.train writes the generated sample set: under its own run directory
    (a run writes nothing outside --out; library callers without one get runs/sample_data)."""
    return (Path(cfg.out) if cfg.out else Path("runs")) / "sample_data"


@dataclass
class Splits:
    train: PairData
    valid: PairData | None
    test: PairData | None
    label_names: list


def load_splits(cfg, min_classes=2):
    """Read train/valid/test; without data.train, the generated sample set (the embedded default),
    whose paths are then set in `cfg.data` (part of the run's effective configuration). Train must hold
    `min_classes` distinct labels (a classifier learns nothing from one)."""
    d = cfg.data
    if d.train is None:
        files = make_sample(sample_dir(cfg), seed=0)
        log.info("no data.train given: using the generated sample data in %s (a smoke test, not a benchmark)",
                 sample_dir(cfg))
        d.train, d.valid = str(files["train"]), d.valid or str(files["valid"])
        d.test = d.test or str(files["test"])
    train = read_data(cfg, d.train, d.labels)
    if train.labels is None:
        raise DataError(f"{d.train}: no label column {d.label!r}")
    if d.labels is None:
        check_label_set(train)
    names = label_map(train.labels, d.labels)
    counts = collections.Counter(train.labels)
    if len(counts) < min_classes:
        raise DataError(f"{d.train}: every row has label {train.labels[0]!r} ({len(train)} rows): a classifier "
                        f"needs at least {min_classes} classes (is data.label the right column?)")
    if d.valid:
        valid = read_data(cfg, d.valid, names)
    else:
        rng = np.random.default_rng(cfg.train.seed)
        perm = rng.permutation(len(train))
        n_valid = max(1, int(round(d.valid_fraction * len(train))))
        log.info("no data.valid: holding out a seeded %d%% of train (%d pairs) for model selection",
                 round(100 * d.valid_fraction), n_valid)
        valid, train = subset(train, np.sort(perm[:n_valid])), subset(train, np.sort(perm[n_valid:]))
    test = read_data(cfg, d.test, names) if d.test else None
    if d.swap_augment:
        train = swap_augment(train)
    return Splits(train, valid, test, names)


def cached_featurize(model, tokenizer, texts_a, texts_b, max_len, cache=None, write=True):
    """`model.featurize`, cached in directory `cache` (None: not cached) under a key of the texts, vocab,
    casing, length and layout (`write=False`: read the cache, never add to it)."""
    if cache is None:
        return model.featurize(tokenizer, texts_a, texts_b, max_len)
    layout = getattr(model, "deployable", model)
    path = DiskCache(cache).path(".npz", Path(tokenizer.vocab_file).read_bytes(),
                                 f"{IDS_VERSION}|{tokenizer.lowercase}|{max_len}|{type(layout).__name__}|"
                                 f"{getattr(layout, 'whole_word', False)}", text_pairs(texts_a, texts_b))
    z = DiskCache.get(path)
    if z is not None:  # each feature's rows stored flat, with their lengths
        keys = {k[: -len(".flat")] for k in z if k.endswith(".flat")}
        return {k: [x.tolist() for x in np.split(z[k + ".flat"], np.cumsum(z[k + ".len"])[:-1])] for k in keys}
    feats = model.featurize(tokenizer, texts_a, texts_b, max_len)
    if write:
        arrays = {}
        for k, rows in feats.items():
            arrays[k + ".flat"] = np.fromiter((t for r in rows for t in r), np.int32)
            arrays[k + ".len"] = np.fromiter((len(r) for r in rows), np.int64, len(rows))
        DiskCache.put(path, arrays)
    return feats


def tokenize(model, tokenizer, pairs, label_names, max_len, name, cache=None, write=True):
    """`pairs` as a `Split` of `model`'s features and label indices (`cache`, `write`: cached_featurize);
    a teacher-labelled transfer pair's label (None) becomes `NO_LABEL`."""
    feats = cached_featurize(model, tokenizer, pairs.text_a, pairs.text_b, max_len, cache, write)
    index = {n: i for i, n in enumerate(label_names)}
    index[None] = NO_LABEL
    labels = None if pairs.labels is None else np.array([index[y] for y in pairs.labels], np.int32)
    return Split(name, feats, labels, (pairs.text_a, pairs.text_b))


def init_encoder(model_cfg, train_texts, run_dir, num_layers=None):
    """The encoder and tokenizer a task starts from: a checkpoint (optionally cut to
    its first k layers) or, with `model.init: null`, random weights and a vocab."""
    num_layers = num_layers if num_layers is not None else model_cfg.num_layers
    if model_cfg.init is not None:
        encoder, tokenizer = load_pretrained(model_cfg.init, num_layers=num_layers,
                                             allow_mismatch=model_cfg.allow_mismatch,
                                             lowercase=model_cfg.lowercase)
        if model_cfg.dropout is not None:
            encoder = _with_dropout(encoder, model_cfg.dropout)
        return encoder, tokenizer
    from data import build_vocab

    vocab = model_cfg.vocab
    built = Path(run_dir) / "vocab.txt"
    if vocab is None and built.is_file():
        vocab = built  # a resumed run must keep its token ids (the WordPiece builder is not deterministic)
        log.info("reusing the run's vocabulary %s", vocab)
    if vocab is None and in_cluster():  # build() runs inside the strategy's scope
        raise RunError("train.strategy=multiworker with model.init=null needs model.vocab: a vocab.txt every "
                       "worker reads (workers that each built one could get different token ids)")
    if vocab is None:
        vocab = build_vocab(train_texts, Path(run_dir) / "vocab.txt", lang=model_cfg.vocab_lang,
                            min_freq=model_cfg.vocab_min_freq)
        log.info("built a %s vocabulary from the training texts: %s", model_cfg.vocab_lang, vocab)
    tokenizer = PairTokenizer(vocab, lowercase=True if model_cfg.lowercase is None else model_cfg.lowercase)
    encoder = BertEncoder(vocab_size=tokenizer.vocab_size, hidden_size=model_cfg.hidden_size,
                          num_layers=num_layers or model_cfg.random_num_layers, num_heads=model_cfg.num_heads,
                          intermediate_size=model_cfg.intermediate_size, max_position=model_cfg.max_position,
                          hidden_dropout=model_cfg.dropout, attention_dropout=model_cfg.dropout, name="encoder")
    return encoder, tokenizer


def _with_dropout(encoder, rate):
    """The encoder with the configured dropout rate instead of the checkpoint's."""
    if encoder.hidden_dropout == rate and encoder.attention_dropout == rate:
        return encoder
    return rebuild_encoder(encoder, f"{encoder.name} (dropout {rate})", hidden_dropout=rate, attention_dropout=rate)
