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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:  # "[]" said "'list' object has no attribute 'get'"
        raise CheckpointError(f"{meta_file}: not a {FORMAT} model directory")
    check_meta_values(meta, meta_file)
    check_labels(meta, meta_file)
    return meta


def check_meta_values(meta, where):
    """The values every reader of a model.json trusts (model and export directories): a newer format is
    refused (it was read as this one), and a max_seq_len that is not a length (-3 failed inside a TensorFlow
    graph, "16" as a string elsewhere) names the file."""
    version = meta.get("format_version", FORMAT_VERSION)
    if type(version) is not int or version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {json.dumps(version)}: this textmatch reads model directories "
                              f"of format_version <= {FORMAT_VERSION} (written by a newer version?)")
    length = meta.get("max_seq_len")
    if type(length) is not int or length < 5:
        raise CheckpointError(f"{where}: \"max_seq_len\" must be a whole number of tokens >= 5, got {json.dumps(length)}")
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict) or type(tokenizer.get("lowercase")) is not bool:
        raise CheckpointError(f"{where}: \"tokenizer\" must be an object with \"lowercase\" true or false, "
                              f"got {json.dumps(tokenizer)[:100]}")
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{where}: \"model\" must be the model's Keras config (an object), "
                              f"got {json.dumps(meta.get('model'))[:100]}")


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
