"""Our model directory: what every task writes and every task, export and server reads.

Layout::

    model/
      model.json         kind, the Keras config of the model, labels, tokenizer settings
      vocab.txt          the tokenizer's vocabulary
      model.weights.h5   Keras weights of the whole model

A directory is written under a temporary name and renamed when complete, so a
crash never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import keras

from common.files import fresh_dir, replace_dir
from modeling.checkpoints import CheckpointError
from modeling.meta import FORMAT, FORMAT_VERSION, check_labels, check_sizes, read_meta_json  # noqa: F401
from modeling.task_model import KINDS
from modeling.tokenization import PairTokenizer

ROOT = Path(__file__).resolve().parents[1]
# Model modules that moved, old -> new: model.json records the module of the model class (Keras's
# "module"), so a directory written before the move names the old one.
MOVED_MODULES = {"modeling.cross_encoder": "crossenc.model"}  # issue 19: the cross-encoder got its package


@dataclass
class LoadedModel:
    model: keras.Model
    tokenizer: PairTokenizer
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def kind(self):
        return self.meta["kind"]

    @property
    def kind_class(self):
        """The registered class of the kind: what export, the runtime and search need of it."""
        return KINDS[self.kind]

    @property
    def labels(self):
        return self.meta.get("labels")

    @property
    def max_seq_len(self):
        return self.meta.get("max_seq_len", 128)

    @property
    def has_classifier(self):
        """Whether the model gives class probabilities (`probs`); without, it labels a pair by its
        `cosine` against `threshold` (an sbert model trained with objective cosine or mnrl)."""
        return "probs" in self.kind_class.predict_outputs(self.meta["model"]["config"])

    @property
    def threshold(self):
        """The decision threshold on `cosine` its run chose on the valid split (`<run>/metrics.json`, the
        kind's `threshold_metric`), or None: no such kind, or a directory away from its run."""
        key = self.kind_class.threshold_metric
        if key is None or self.path is None:
            return None
        try:
            metrics = json.loads((Path(self.path).resolve().parent / "metrics.json").read_text(encoding="utf-8"))
            return float(metrics["valid"][key])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def model_meta(model, tokenizer, labels=None, max_seq_len=128, extra=None):
    """model.json's content for `model`: what a `LoadedModel` of it carries, saved or not."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "model": keras.saving.serialize_keras_object(model),
        "labels": list(labels) if labels is not None else None,
        "tokenizer": {"vocab": "vocab.txt", "lowercase": tokenizer.lowercase, "vocab_size": tokenizer.vocab_size},
        "max_seq_len": int(max_seq_len),
        **(extra or {}),
    }


def save_model_dir(model, path, tokenizer, labels=None, max_seq_len=128, extra=None):
    """Write `model` (a task model with `kind` and `dummy_inputs()`) as a model directory."""
    path = Path(path)
    tmp = fresh_dir(path.with_name(path.name + ".partial"))
    meta = model_meta(model, tokenizer, labels, max_seq_len, extra)
    shutil.copyfile(tokenizer.vocab_file, tmp / "vocab.txt")
    model.save_weights(str(tmp / "model.weights.h5"))
    meta["weights"] = _weights_record(tmp / "model.weights.h5")  # checked by load_model_dir
    (tmp / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return replace_dir(tmp, path)


def read_meta(path):
    """model.json of a model or export directory, checked, its kind's class registered."""
    meta = read_meta_json(path)
    kind_class(meta, Path(path) / "model.json")
    return meta


def kind_class(meta, where="model.json"):
    """The model class registered for `meta["kind"]` (modeling.task_model.KINDS).

    The class registers itself when its module is imported: the module model.json's model
    config names (Keras records "module" and "class_name"), so modeling never names the
    packages above it. A kind still unknown is looked for among all the project's model
    modules (`discover_kinds`) before it is refused."""
    kind = meta.get("kind")
    module = (meta.get("model") or {}).get("module") if isinstance(meta.get("model"), dict) else None
    if isinstance(module, str) and kind not in KINDS:
        _import_model_module(MOVED_MODULES.get(module, module))
    if kind not in KINDS:
        discover_kinds()
    if not isinstance(kind, str) or kind not in KINDS:
        raise CheckpointError(f"{where}: unknown model kind {kind!r}")
    return KINDS[kind]


def discover_kinds():
    """Import every `<package>/model.py` of the project (the method packages' model classes
    register their kinds on import); returns the registry, kind -> class."""
    for f in sorted(ROOT.glob("*/model.py")):
        if (f.parent / "__init__.py").is_file():
            _import_model_module(f"{f.parent.name}.model")
    return KINDS


def _import_model_module(name):
    """Import a module named by a model.json, only if it is one of the project's own files
    (a foreign or missing module is never imported: its kind stays unknown). Returns whether it was."""
    parts = name.split(".")
    if not all(p.isidentifier() for p in parts) or not (
            (ROOT / Path(*parts)).with_suffix(".py").is_file() and (ROOT / parts[0] / "__init__.py").is_file()):
        return False
    importlib.import_module(name)
    return True


def load_model_dir(path, expect_kind=None):
    """Rebuild the model of a model directory with its weights and tokenizer."""
    path = Path(path)
    meta = read_meta(path)
    if expect_kind is not None and meta["kind"] not in (
            (expect_kind,) if isinstance(expect_kind, str) else tuple(expect_kind)):
        raise CheckpointError(f"{path}: a {meta['kind']} model, expected {expect_kind}")
    if not (path / "model.weights.h5").is_file() and (path / "parity.json").is_file():
        raise CheckpointError(_export_dir_message(path))
    for name in ("vocab.txt", "model.weights.h5"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing (half-written model directory?)")
    try:
        model = keras.saving.deserialize_keras_object(meta["model"])
        model(model.dummy_inputs())  # create the variables before loading them
    except Exception as e:  # an edited or foreign model.json: Keras raises TypeError, ValueError, ...
        raise CheckpointError(f"{path / 'model.json'}: cannot rebuild the {meta['kind']} model from its "
                              f"config ({_one_line(e)})") from None
    tokenizer = PairTokenizer(path / "vocab.txt", meta["tokenizer"]["lowercase"])
    check_sizes(path, meta, model.encoder, tokenizer)  # before the (slow) weights
    try:
        model.load_weights(str(path / "model.weights.h5"))
    except Exception as e:  # h5py / Keras raise many types for a damaged file
        hint = ("the weights do not fit the architecture in model.json: "
                if "could not be loaded" in str(e) else "")
        raise CheckpointError(f"{path / 'model.weights.h5'}: cannot load weights ({hint}{_one_line(e)})") from None
    _check_weights(path, meta)  # after Keras's own errors, which say more about a file it cannot read
    return LoadedModel(model=model, tokenizer=tokenizer, meta=meta, path=path)


def _weights_record(file):
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"file": file.name, "bytes": file.stat().st_size, "sha256": h.hexdigest()}


def _check_weights(path, meta):
    """A model.weights.h5 damaged inside its tensors' data (bytes flipped by a disk, a copy, an edit) loads
    without an error and scores garbage: compared against the size and sha256 model.json records (model
    directories written before the record have none, and are not checked)."""
    want = meta.get("weights")
    if not isinstance(want, dict) or "sha256" not in want:
        return
    file = path / "model.weights.h5"
    size = file.stat().st_size
    if size != want.get("bytes"):
        what = f"{size} bytes, model.json records {want.get('bytes')}"
    elif (digest := _weights_record(file)["sha256"]) != want["sha256"]:
        what = f"sha256 {digest[:12]}..., model.json records {want['sha256'][:12]}..."
    else:
        return
    raise CheckpointError(f"{file}: not the weights this model directory was written with ({what}): "
                          f"damaged or replaced since; copy the model directory again")


def _export_dir_message(path):
    """An export directory keeps a copy of model.json (and vocab.txt) but no weights: say so, and name
    the model directory it came from (parity.json's "model")."""
    try:
        source = json.loads((path / "parity.json").read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        source = None
    named = f" ({path / 'parity.json'} names it: {source})" if isinstance(source, str) else ""
    return (f"{path} is an export directory (parity.json, saved_model/), not a model directory: give the model "
            f"directory it was exported from{named}")


def _one_line(error, limit=300):
    """A library's (often multi-line, very long) message as one line for an `error: ...` report."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
