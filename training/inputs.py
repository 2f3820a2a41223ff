"""A training run's inputs: its data splits (read as the `data.*` keys say) and their tokenisation
(cached on disk)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import DataError, PairData, check_label_set, label_map, make_sample, read_pairs, swap_augment
from modeling.tokenization import IDS_VERSION
from training.trainer import Split

log = logging.getLogger(__name__)

SAMPLE_DIR = Path("runs") / "sample_data"
TOKEN_CACHE = Path("runs") / ".cache" / "tokens"


@dataclass
class Splits:
    train: PairData
    valid: PairData | None
    test: PairData | None
    label_names: list


def read_data(cfg, path, labels=None, labelled=True):
    """A pair file as the `data.*` keys say; skipped bad rows are reported, `data.max_rows` applies."""
    d = cfg.data
    pairs = read_pairs(path, format=d.format, text_a=d.text_a, text_b=d.text_b, label=d.label if labelled else None,
                       labels=labels, on_bad_row=d.on_bad_row)
    if pairs.skipped:
        log.warning("%s: skipped %d bad rows (%s)", path, pairs.skipped, dict(pairs.skip_reasons))
    if d.max_rows:
        pairs = subset(pairs, np.arange(min(d.max_rows, len(pairs))))
    if len(pairs) == 0:
        raise DataError(f"{path}: no usable rows")
    return pairs


def subset(pairs, idx):
    return PairData(text_a=[pairs.text_a[i] for i in idx], text_b=[pairs.text_b[i] for i in idx],
                    labels=None if pairs.labels is None else [pairs.labels[i] for i in idx],
                    lines=[pairs.lines[i] for i in idx], path=pairs.path,
                    skipped=pairs.skipped, skip_reasons=pairs.skip_reasons, columns=pairs.columns)


def load_splits(cfg):
    """Read train/valid/test; without data.train, the generated sample set (the embedded default),
    whose paths are then set in `cfg.data` (part of the run's effective configuration)."""
    d = cfg.data
    if d.train is None:
        files = make_sample(SAMPLE_DIR, seed=0)
        log.info("no data.train given: using the generated sample data in %s (a smoke test, not a benchmark)",
                 SAMPLE_DIR)
        d.train, d.valid = str(files["train"]), d.valid or str(files["valid"])
        d.test = d.test or str(files["test"])
    train = read_data(cfg, d.train, d.labels)
    if train.labels is None:
        raise DataError(f"{d.train}: no label column {d.label!r}")
    if d.labels is None:
        check_label_set(train)
    names = label_map(train.labels, d.labels)
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


def cached_featurize(model, tokenizer, texts_a, texts_b, max_len, write=True):
    """`model.featurize`, cached on disk under a key of the texts, vocab, casing, length and layout
    (`write=False`: read the cache, never add to it)."""
    h = hashlib.sha256()
    h.update(Path(tokenizer.vocab_file).read_bytes())
    layout = getattr(model, "deployable", model)
    h.update(f"{IDS_VERSION}|{tokenizer.lowercase}|{max_len}|{type(layout).__name__}|"
             f"{getattr(layout, 'whole_word', False)}".encode())
    for a, b in zip(texts_a, texts_b if texts_b is not None else [None] * len(texts_a)):
        h.update(f"{a}\x1f{b}\x1e".encode())
    path = TOKEN_CACHE / f"{h.hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path) as z:
            keys = {k[: -len(".flat")] for k in z.files if k.endswith(".flat")}
            return {k: [x.tolist() for x in np.split(z[k + ".flat"], np.cumsum(z[k + ".len"])[:-1])] for k in keys}
    feats = model.featurize(tokenizer, texts_a, texts_b, max_len)
    if not write:
        return feats
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for k, rows in feats.items():
        arrays[k + ".flat"] = np.fromiter((t for r in rows for t in r), np.int32)
        arrays[k + ".len"] = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # workers sharing a cache write their own
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return feats


def tokenize(model, tokenizer, pairs, label_names, max_len, name, cache=True):
    """`pairs` as a `Split` of `model`'s features and label indices."""
    feats = cached_featurize(model, tokenizer, pairs.text_a, pairs.text_b, max_len, write=cache)
    index = {n: i for i, n in enumerate(label_names)}
    labels = None if pairs.labels is None else np.array([index[y] for y in pairs.labels], np.int32)
    return Split(name, feats, labels, (pairs.text_a, pairs.text_b))
