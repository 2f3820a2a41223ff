"""Read BERT weights from Google TF1 checkpoints and HuggingFace directories (and write the latter).

Both formats are converted to one canonical naming (HF's, without the `bert.`
prefix) with arrays in Keras layout ([in, out] kernels), then assigned through
`encoder_weight_map`. Every tensor is accounted for in a `LoadReport`. The HF
writer (`hf_tensors`, `bert_config`) is the same mapping run backwards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the encoder."""


# Tensors that pre-training or a task head leaves in checkpoints and that an encoder never uses
# (`classifier.*`: BertForSequenceClassification's head, read by `read_hf_classifier`).
_IGNORABLE = re.compile(
    r"^(cls\.|classifier\.|embeddings\.position_ids$|global_step$|.*adam_[mv]$|.*/adam_[mv]$|output_bias$"
    r"|output_weights$)")


@dataclass
class LoadReport:
    """What happened to each tensor while loading a checkpoint."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # the encoder has it, the checkpoint not
    unexpected: list[str] = field(default_factory=list)  # the checkpoint has it, the encoder not
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint (a, b) vs encoder (c, d)"
    ignored: list[str] = field(default_factory=list)  # pre-training heads, optimizer slots
    truncated: list[str] = field(default_factory=list)  # layers beyond num_layers

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self):
        parts = [f"{len(self.loaded)} tensors loaded from {self.source}"]
        for name in ("missing", "unexpected", "mismatched", "ignored", "truncated"):
            items = getattr(self, name)
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{name}: {shown}")
        return "; ".join(parts)


def encoder_weight_map(encoder):
    """Canonical name -> Keras variable, for every weight of a built `BertEncoder`."""
    encoder.build_for_loading()
    m = {
        "embeddings.word_embeddings.weight": encoder.word_embeddings.embeddings,
        "embeddings.position_embeddings.weight": encoder.position_embeddings.embeddings,
        "embeddings.token_type_embeddings.weight": encoder.token_type_embeddings.embeddings,
        "embeddings.LayerNorm.weight": encoder.embeddings_norm.gamma,
        "embeddings.LayerNorm.bias": encoder.embeddings_norm.beta,
    }

    def dense(prefix, layer):
        m[f"{prefix}.weight"] = layer.kernel
        m[f"{prefix}.bias"] = layer.bias

    def norm(prefix, layer):
        m[f"{prefix}.weight"] = layer.gamma
        m[f"{prefix}.bias"] = layer.beta

    for i, layer in enumerate(encoder.encoder_layers):
        p = f"encoder.layer.{i}"
        dense(f"{p}.attention.self.query", layer.attention.query)
        dense(f"{p}.attention.self.key", layer.attention.key)
        dense(f"{p}.attention.self.value", layer.attention.value)
        dense(f"{p}.attention.output.dense", layer.attention_output)
        norm(f"{p}.attention.output.LayerNorm", layer.attention_norm)
        dense(f"{p}.intermediate.dense", layer.intermediate)
        dense(f"{p}.output.dense", layer.output_dense)
        norm(f"{p}.output.LayerNorm", layer.output_norm)
    if encoder.pooler is not None:
        dense("pooler.dense", encoder.pooler)
    return m


def assign_weights(encoder, tensors, source, allow_mismatch=False):
    """Assign canonical-name arrays (Keras layout) to `encoder`; return the report.

    Raises CheckpointError naming the tensors when something is missing,
    unexpected or mis-shaped, unless `allow_mismatch` (those weights then keep
    their random initial values).
    """
    report = LoadReport(source=source)
    targets = encoder_weight_map(encoder)
    n_layers = encoder.num_layers
    for name, value in tensors.items():
        layer = re.match(r"encoder\.layer\.(\d+)\.", name)
        if _IGNORABLE.match(name):
            report.ignored.append(name)
        elif layer and int(layer.group(1)) >= n_layers:
            report.truncated.append(name)
        elif name not in targets:
            report.unexpected.append(name)
        elif tuple(value.shape) != tuple(targets[name].shape):
            report.mismatched.append(f"{name}: checkpoint {tuple(value.shape)} vs encoder {tuple(targets[name].shape)}")
        else:
            targets[name].assign(value.astype(np.float32))
            report.loaded.append(name)
    report.missing = [n for n in targets if n not in tensors]
    if not report.ok and not allow_mismatch:
        raise CheckpointError(f"checkpoint does not fit the encoder: {report.summary()} "
                              "(set model.allow_mismatch=true to load anyway)")
    return report


# --------------------------------------------------------------------------- configs

def encoder_args_from_bert_config(cfg, source):
    """Map a BERT `config.json` / `bert_config.json` to `BertEncoder` arguments."""
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (exact 'gelu' only)")
    if cfg.get("model_type", "bert") not in ("bert", "roberta") or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"{source}: not a BERT-architecture model "
                              f"(model_type {cfg.get('model_type')!r}, position embeddings "
                              f"{cfg.get('position_embedding_type')!r})")
    try:
        return dict(
            vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]),
            max_position=int(cfg.get("max_position_embeddings", 512)),
            type_vocab_size=int(cfg.get("type_vocab_size", 2)),
            hidden_dropout=float(cfg.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(cfg.get("attention_probs_dropout_prob", 0.1)),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            initializer_range=float(cfg.get("initializer_range", 0.02)),
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: missing key {e.args[0]!r}") from None


def bert_config(encoder):
    """HF BERT `config.json` keys of `encoder`: the inverse of `encoder_args_from_bert_config`."""
    a = encoder.architecture()
    return {"model_type": "bert", "vocab_size": a["vocab_size"], "hidden_size": a["hidden_size"],
            "num_hidden_layers": a["num_layers"], "num_attention_heads": a["num_heads"],
            "intermediate_size": a["intermediate_size"], "hidden_act": "gelu",  # exact (erf) GELU, as ours
            "max_position_embeddings": a["max_position"], "type_vocab_size": a["type_vocab_size"],
            "hidden_dropout_prob": a["hidden_dropout"], "attention_probs_dropout_prob": a["attention_dropout"],
            "layer_norm_eps": a["layer_norm_eps"], "initializer_range": a["initializer_range"],
            "position_embedding_type": "absolute", "pad_token_id": 0}


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


# --------------------------------------------------------------------------- Google TF1

def tf1_to_canonical(name):
    """`bert/encoder/layer_3/attention/self/query/kernel` -> `encoder.layer.3.attention.self.query.weight`."""
    n = name[len("bert/"):] if name.startswith("bert/") else name
    n = re.sub(r"layer_(\d+)", r"layer.\1", n)
    n = n.replace("/", ".")
    n = re.sub(r"\.(kernel|gamma)$", ".weight", n)
    n = re.sub(r"\.beta$", ".bias", n)
    if n.startswith("embeddings.") and n.endswith("_embeddings"):
        n += ".weight"
    return n


def read_tf1_checkpoint(ckpt_prefix):
    """Google TF1 BERT checkpoint -> canonical name -> array (kernels are already [in, out])."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(ckpt_prefix))
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise CheckpointError(f"{ckpt_prefix}: cannot read TF checkpoint ({str(e).splitlines()[0]})") from None
    return {tf1_to_canonical(name): reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()}


# --------------------------------------------------------------------------- HuggingFace

_HF_LINEAR = re.compile(r"\.(query|key|value|dense)\.weight$")


def hf_to_canonical(name):
    """Strip the `bert.` prefix and old `gamma`/`beta` LayerNorm names."""
    if name.startswith("bert."):
        name = name[len("bert."):]
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


def hf_tensors(encoder, prefix=""):
    """`encoder`'s weights under HF names (`prefix` + canonical name), Linear weights [out, in]:
    what `read_hf_safetensors` reads back (`prefix` "bert." for BertFor* models)."""
    return {prefix + name: np.ascontiguousarray(v.numpy().T if _HF_LINEAR.search(name) else v.numpy(), np.float32)
            for name, v in encoder_weight_map(encoder).items()}


def read_hf_safetensors(path):
    """HF `model.safetensors` -> canonical name -> array, Linear weights transposed to [in, out]."""
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read safetensors ({e})") from None
    out = {}
    for name, value in raw.items():
        canon = hf_to_canonical(name)
        out[canon] = value.T if _HF_LINEAR.search(canon) else value
    return out


def read_hf_classifier(d):
    """BertForSequenceClassification's head in `d` (config.json + model.safetensors):
    `(labels, kernel [H, C], bias [C])`, labels in class-index order (config's id2label);
    None when the checkpoint has no `classifier.*` tensors."""
    from safetensors import safe_open

    d = Path(d)
    if not (d / "model.safetensors").is_file():  # a TF1 checkpoint, a model directory, ...
        return None
    try:
        with safe_open(str(d / "model.safetensors"), "numpy") as f:
            if "classifier.weight" not in f.keys():
                return None
            weight, bias = f.get_tensor("classifier.weight"), f.get_tensor("classifier.bias")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{d / 'model.safetensors'}: cannot read safetensors ({e})") from None
    id2label = read_json(d / "config.json").get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(weight.shape[0])]
    return labels, weight.T, bias
