"""model.json read and checked as plain JSON: what the model directory and the export directory share.

No Keras here: a server of an ONNX export reads its model.json through this module alone
(modeling.model_dir adds the model classes, and Keras, on top).
"""

from __future__ import annotations

import json
from pathlib import Path

from modeling.checkpoints import CheckpointError

FORMAT = "textmatch-model"
FORMAT_VERSION = 1


def read_meta_json(path):
    """model.json's content, its format and labels checked (not its kind: `model_dir.read_meta` does)."""
    path = Path(path)
    meta_file = path / "model.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a model directory (no model.json)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: not a {FORMAT} model directory")
    check_labels(meta, meta_file)
    return meta


def check_labels(meta, where):
    """`labels` must name the classifier's classes (model config `num_labels`) in order; a model without
    a classifier (masked LM) may have none. Checked here: every task indexes it far from model.json."""
    labels = meta.get("labels")
    config = meta["model"].get("config") if isinstance(meta.get("model"), dict) else None
    n = config.get("num_labels") if isinstance(config, dict) else None
    names_ok = isinstance(labels, list) and all(isinstance(x, str) for x in labels)
    if (n is None and (labels is None or names_ok)) or (names_ok and len(labels) == n):
        return
    want = f"a list of its {n} class names (strings), in order" if n is not None else "a list of strings or null"
    raise CheckpointError(f"{where}: \"labels\" must be {want}, got {json.dumps(labels)}")


def check_sizes(path, meta, encoder, tokenizer):
    """A vocab.txt or max_seq_len that does not fit the encoder would give wrong ids or fail in a gather
    far from here. The vocab must have the size saved with the model (older directories: the embedding rows);
    a checkpoint may have more embedding rows than vocab lines, never fewer."""
    n, rows = tokenizer.vocab_size, encoder.vocab_size
    saved = meta["tokenizer"].get("vocab_size")
    if n > rows or n != (saved if saved is not None else rows):
        was = f" and was saved with a {saved}-token vocab.txt" if saved is not None else ""
        raise CheckpointError(f"{path / 'vocab.txt'}: {n} tokens, but the model has {rows} token embeddings{was}; "
                              f"this vocab.txt does not belong to the model")
    if meta.get("max_seq_len", 0) > encoder.max_position:
        raise CheckpointError(f"{path / 'model.json'}: max_seq_len {meta['max_seq_len']} is longer than the model's "
                              f"{encoder.max_position} position embeddings (trained with train.max_seq_len above "
                              f"model.max_position); retrain with train.max_seq_len <= {encoder.max_position}")
