"""textmatch: a model from Python, in one call.

`load` takes anything `model.init` takes, plus an export directory:

- a model directory (what the training tasks write), run through Keras;
- an export directory (what `--task export` writes), run through ONNX Runtime (or its SavedModel);
- a bare checkpoint: `minilm` (the embedded all-MiniLM-L6-v2), a HuggingFace or Google TF1
  directory, an HF hub id, a `--task pretrain` model directory. It has no classifier: `encode`
  gives mean-pooled, L2-normalised sentence vectors (for all-MiniLM-L6-v2 exactly
  sentence-transformers' embeddings), `rank` ranks by cosine, and `predict` says to fine-tune first.

Texts are tokenised exactly as in training and as the server does (the same `runtime` underneath).
A single text or pair gives a single result; any iterable (a list, a generator) gives one row per item.

Example (runs as is after `make install`; doctested by tests/test_api.py)::

    >>> import textmatch
    >>> m = textmatch.load("minilm")
    >>> m.encode("how old are you").shape           # one text: a vector [dim]
    (384,)
    >>> m.encode(["how old are you", "hi"]).shape   # an iterable of texts: [N, dim], L2-normalised
    (2, 384)
    >>> [text for _, text, _ in m.rank("how old are you", ["where do you live", "what is your age"])]
    ['what is your age', 'where do you live']

With a fine-tuned model (here the quick start's; any model or export directory works)::

    >>> ce = textmatch.load("runs/mine/model")                        # doctest: +SKIP
    >>> ce.predict(("how old are you", "what is your age"))            # doctest: +SKIP
    array([0.03, 0.97], dtype=float32)
    >>> ce.predict([("how old are you", "what is your age")]).shape    # doctest: +SKIP
    (1, 2)
    >>> ce.labels                                                      # doctest: +SKIP
    ['0', '1']
    >>> ce.rank("how old are you", ["where do you live", "what is your age"], top_k=1)   # doctest: +SKIP
    [(1, 'what is your age', 0.97)]

`rank` scores each candidate with the model's probability of the positive class (a
cross-encoder or VIRT reads the pair together), or by cosine similarity for a model without a
classifier (a bi-encoder trained with `sbert.objective=cosine|mnrl`, a bare checkpoint).

Bad arguments raise TypeError (a wrong type) or ValueError (a wrong value) naming the argument and,
in a collection, the position of the bad item: `texts[3]: expected a string, got None`.
"""

from __future__ import annotations

import importlib.util
import json
import numbers
import os
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _check_own_packages():
    """The project's packages have generic names (config, data, ...): a module of the same name that comes
    first on the import path (a `config.py` beside the user's script) would be imported in their place and
    fail far from here. Say so instead, before importing any of them."""
    for init in sorted(ROOT.glob("*/__init__.py")):
        name = init.parent.name
        module = sys.modules.get(name)
        spec = module.__spec__ if module is not None else importlib.util.find_spec(name)
        if spec is None:  # the repository is not on the import path (textmatch loaded by file name)
            continue
        origin = spec.origin or "a namespace package"
        if origin == "a namespace package" or Path(origin).resolve() != init.resolve():
            raise ImportError(f"textmatch needs its package {name!r} ({init.parent}), but {origin} comes first "
                              f"on the import path: rename that module or run from another directory")


_check_own_packages()

from runtime.logs import quiet_start_up  # noqa: E402

quiet_start_up()  # before TensorFlow is imported: no CUDA probe lines, no PyTorch or faiss notices

import numpy as np  # noqa: E402

from runtime.backends import BACKENDS, BackendError, open_model, predict_pairs  # noqa: E402
from runtime.batching import run_in_batches  # noqa: E402
from runtime.rows import invalid_text, text_rows  # noqa: E402
from search.engine import positive_class  # noqa: E402
from search.index import recall_vectors  # noqa: E402  (the vectors the index task stores)

__all__ = ["load", "Matcher", "BackendError"]


def load(path, backend="auto", int8=None, threads=None):
    """A `Matcher` for a model directory, an export directory or a bare checkpoint.

    Args:
        path: a model directory (`<run>/model`), an export directory (`--task export`'s output), or a
            bare checkpoint, as `model.init` takes it: `minilm`, a HuggingFace or Google TF1 directory,
            an HF hub id, a `--task pretrain` model directory (an encoder-only Matcher: see the module).
        backend: for an export directory, `auto` (default: the fastest artifact the export timed and
            checked, docs/serving.md), `onnx` (ONNX Runtime), `openvino` (the OpenVINO IR) or `tf` (the
            SavedModel); model directories and checkpoints always run through Keras.
        int8: an export directory's int8 predict_ids graph: True serves it, False never, None (default)
            lets `auto` pick it when it passed the export's int8 gate.
        threads: intra-op threads (default: the physical cores).

    Raises BackendError (a ValueError) naming the path and what is missing.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a directory or a checkpoint name (a str or a path), got {_shown(path)}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(map(repr, BACKENDS))}, got {_shown(backend)}")
    if int8 is not None and not isinstance(int8, bool):  # int8="no" was true: "model.int8.onnx: missing"
        raise TypeError(f"int8: expected True, False or None, got {_shown(int8)}")
    if isinstance(path, str) and not path.strip():  # '' was read as '.': ".: not a checkpoint directory"
        raise ValueError("path: an empty string; give a model or export directory or a checkpoint name")
    threads = _count(threads, "threads", none_ok=True)
    source = _checkpoint_dir(path)
    if source is None:
        return Matcher(open_model(path, backend=backend, int8=int8, threads=threads))
    if int8:
        raise BackendError(f"{path}: int8 needs an export directory (--task export writes an int8 copy in onnx/)")
    return _EncoderOnly(_encoder_backend(path, source, threads), str(path))


# ----------------------------------------------------------------------------- bare checkpoints
def _checkpoint_dir(path):
    """The local directory of `path` when it is a bare checkpoint (a `model.init` value that is not a model
    or export directory), else None (open_model takes it, or says why not)."""
    from modeling.checkpoints import CheckpointError
    from runtime.backends import is_export_dir

    p = Path(path).expanduser()
    if p.is_dir() and is_export_dir(p):
        return None  # before the imports below, which import Keras: an export runs without it
    from modeling.model_dir import kind_class, read_meta
    from modeling.pretrained import MINILM, hub_id, resolve

    try:
        if str(path) == MINILM or (hub_id(path) and not p.exists()):
            return resolve(path)
        if not p.is_dir():
            return None  # open_model: no such directory
        if (p / "model.json").is_file():
            # a model directory the runtime cannot serve (pretrain's masked LM) is a checkpoint to the tasks
            return p if not kind_class(read_meta(p)).servable else None
    except CheckpointError as e:
        raise BackendError(str(e)) from None
    return p  # a HuggingFace or TF1 directory, or one that load_pretrained says is neither


def _encoder_backend(path, source, threads):
    """A Keras backend of the checkpoint as a bi-encoder without a classifier: the encoder, mean pooling
    over the text's tokens ([CLS] and [SEP] included, as sentence-transformers pools) and L2 normalisation."""
    from modeling.checkpoints import CheckpointError
    from modeling.model_dir import LoadedModel, model_meta, read_meta
    from modeling.pretrained import MINILM, load_pretrained
    from runtime.backends import KerasBackend
    from senbert.model import SentenceBert

    try:
        encoder, tokenizer = load_pretrained(source)
        if (source / "model.json").is_file():  # the length the model was trained at: later positions never were
            max_len = int(read_meta(source).get("max_seq_len", 128))
        else:
            max_len = _sentence_transformers_length(source) or encoder.max_position
    except CheckpointError as e:
        raise BackendError(str(e)) from None
    model = SentenceBert(encoder, objective="cosine", pooling="mean", normalize=True, name="encoder_only")
    model(model.dummy_inputs())
    max_len = min(max_len, encoder.max_position)
    loaded = LoadedModel(model, tokenizer, model_meta(model, tokenizer, max_seq_len=max_len), source)
    return KerasBackend(loaded, MINILM if str(path) == MINILM else source.name, max_len, threads)


def _sentence_transformers_length(source):
    """sentence-transformers' `max_seq_length` of a checkpoint that has one (all-MiniLM-L6-v2: 256), else None."""
    try:
        return int(json.loads((source / "sentence_bert_config.json").read_text(encoding="utf-8"))["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- argument checks
# Every argument of the API is checked here, so a bad one fails at once with its name and position
# (not later, as a tokenizer's or numpy's message about something else).
def _shown(value):
    if value is None or isinstance(value, (bool, numbers.Number)) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a {type(value).__name__}" + (f" of {len(value)}" if isinstance(value, (tuple, list)) else "")


def _count(value, name, none_ok=False):
    """An integer >= 1 (a bool is refused: True is no batch size), or None when `none_ok`."""
    if value is None and none_ok:
        return None
    wanted = f"{name}: expected {'None or ' if none_ok else ''}an integer >= 1, got {_shown(value)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(wanted)
    if value < 1:
        raise ValueError(wanted)
    return int(value)


def _text(value, where):
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {_shown(value)}")
    if (problem := invalid_text(value)) is not None:
        raise ValueError(f"{where}: {problem}")
    return value


def _items(values, name, expected):
    """`values` as a list: any iterable (a generator too, read once) but a string."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name}: expected {expected}, got {_shown(values)}")
    return list(values)


def _texts(values, name, one_ok=True):
    """(texts, whether `values` was one text)."""
    if one_ok and isinstance(values, str):
        return [_text(values, name)], True
    expected = "a string or an iterable of strings" if one_ok else "an iterable of strings"
    return [_text(t, f"{name}[{i}]") for i, t in enumerate(_items(values, name, expected))], False


PAIR_TYPES = (tuple, list, np.ndarray)


def _pair(value, where):
    if isinstance(value, (str, bytes)) or not isinstance(value, PAIR_TYPES) or len(value) != 2:
        raise TypeError(f"{where}: expected a (text_a, text_b) pair, got {_shown(value)}")
    return _text(value[0], f"{where}[0]"), _text(value[1], f"{where}[1]")


def _pairs(values, name="pairs"):
    """(pairs, whether `values` was one pair). One pair is two items, the first a string (as
    sentence-transformers' CrossEncoder reads it): a list of pairs never starts with a string."""
    if isinstance(values, PAIR_TYPES) and len(values) == 2 and isinstance(values[0], str):
        return [_pair(values, name)], True
    expected = "a (text_a, text_b) pair or an iterable of pairs"
    return [_pair(p, f"{name}[{i}]") for i, p in enumerate(_items(values, name, expected))], False


# ----------------------------------------------------------------------------- the model
class Matcher:
    """A loaded model: `predict(pairs)`, `encode(texts)`, `rank(query, candidates)`.

    Attributes: `kind` (cross_encoder, sbert, virt; `encoder` for a bare checkpoint), `labels` (class
    names of `predict`'s columns), `path`, `backend` (the runtime backend, for what the server does with it).
    """

    def __init__(self, backend):
        self.backend = backend
        self.kind, self.labels, self.path = backend.kind, list(backend.labels), backend.path

    def __repr__(self):
        return f"Matcher({self.backend.describe()})"

    @property
    def has_classifier(self):
        return "probs" in self.backend.functions["predict_ids"].outputs

    def predict(self, pairs, batch_size=64):
        """Class probabilities of `(text_a, text_b)` pairs: [len(labels)] for one pair, [N, len(labels)]
        for an iterable of pairs (in input order)."""
        pairs, one = _pairs(pairs)
        probs = predict_pairs(self.backend, [a for a, _ in pairs], [b for _, b in pairs],
                              _count(batch_size, "batch_size"))
        return probs[0] if one else probs

    def encode(self, texts, batch_size=64):
        """L2-normalised vectors of single texts: [dim] for one text, [N, dim] for an iterable of texts
        (bi-encoders: sbert's sentence embedding, VIRT's mean last-layer token state, as the `index` task
        stores them; a bare checkpoint: its mean-pooled last layer)."""
        cls = self.backend.spec
        if cls.encode_output is None:
            raise BackendError(f"{self.path}: a {self.kind} model reads the two texts together and has no "
                               f"vector per text; encode needs an sbert or virt model")
        texts, one = _texts(texts, "texts")
        batch_size = _count(batch_size, "batch_size")
        if not texts:
            return np.zeros((0, self.backend.hidden_size), np.float32)
        vectors = recall_vectors(cls, run_in_batches(self.backend, "encode_ids", text_rows(self.backend, texts),
                                                     batch_size))
        return vectors[0] if one else vectors

    def rank(self, query, candidates, top_k=None, batch_size=64):
        """`[(index, text, score)]` of `candidates` (any iterable of strings) for `query`, best first
        (`top_k`: keep that many, None: all).

        score: the probability of the positive class, or the cosine for a model without a classifier."""
        query = _text(query, "query")
        candidates, _ = _texts(candidates, "candidates", one_ok=False)
        top_k, batch_size = _count(top_k, "top_k", none_ok=True), _count(batch_size, "batch_size")
        if not candidates:
            return []
        if self.has_classifier:
            probs = predict_pairs(self.backend, [query] * len(candidates), candidates, batch_size)
            scores = probs[:, positive_class(self.backend)]
        else:
            scores = self.encode(candidates, batch_size) @ self.encode(query, batch_size)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(int(i), candidates[i], float(scores[i])) for i in order]


class _EncoderOnly(Matcher):
    """A bare checkpoint: an encoder without a classifier (see the module docstring)."""

    def __init__(self, backend, init):
        super().__init__(backend)
        self.kind, self.init = "encoder", init  # init: the path as given, the model.init that fine-tunes it

    def __repr__(self):
        return f"Matcher(bare checkpoint {self.init}: encoder only, mean pooling; {self.path})"

    def predict(self, pairs, batch_size=64):
        raise BackendError(f"{self.init}: a bare checkpoint has no classifier: fine-tune it first with --task "
                           f"finetune --set model.init={self.init}; encode and rank work without one")
