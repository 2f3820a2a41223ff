"""textmatch: a trained model from Python, in one call.

Loads a model directory (what the training tasks write, run through Keras) or an export
directory (what `--task export` writes, run through ONNX Runtime) and scores text with it,
tokenised exactly as in training and as the server does (the same `runtime` underneath).

Example (the embedded MiniLM fine-tuned by the quick start; any model directory works)::

    import textmatch

    m = textmatch.load("runs/quick/model")                  # or an export directory
    p = m.predict([("how old are you", "what is your age")])  # numpy [N, classes] probabilities
    m.labels                                                # class names, in column order
    m.rank("how old are you", ["where do you live", "what is your age"])
    # -> [(1, 'what is your age', 0.97), (0, 'where do you live', 0.02)]   best first
    sbert = textmatch.load("runs/sbert/<stamp>/model")
    sbert.encode(["how old are you"])                       # numpy [N, dim], L2-normalised

`rank` scores each candidate with the model's probability of the positive class (a
cross-encoder or VIRT reads the pair together), or by cosine similarity for a bi-encoder
trained without a classifier (`sbert.objective=cosine|mnrl`).
"""

from __future__ import annotations

import logging
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ start-up chatter
# transformers (its tokenizers only are used) announces on import that PyTorch is absent: not news here
logging.getLogger("transformers").addFilter(lambda record: "PyTorch was not found" not in record.getMessage())

from runtime.backends import BackendError, open_model, predict_pairs  # noqa: E402
from runtime.batching import run_in_batches  # noqa: E402
from runtime.rows import text_rows  # noqa: E402
from search.engine import positive_class  # noqa: E402
from search.index import recall_vectors  # noqa: E402  (the vectors the index task stores)

__all__ = ["load", "Matcher", "BackendError"]


def load(path, backend="onnx", int8=False, threads=None):
    """A `Matcher` for a model directory or an export directory.

    Args:
        path: a model directory (`<run>/model`) or an export directory (`--task export`'s output).
        backend: for an export directory, `onnx` (ONNX Runtime, default) or `tf` (the SavedModel);
            a model directory always runs through Keras.
        int8: an export directory's int8 ONNX graph (when the export published one).
        threads: intra-op threads (default: the physical cores).
    """
    return Matcher(open_model(path, backend=backend, int8=int8, threads=threads))


def _texts(values, what):
    if isinstance(values, str) or not all(isinstance(t, str) for t in values):
        raise TypeError(f"{what}: expected a list of strings")
    return list(values)


class Matcher:
    """A loaded model: `predict(pairs)`, `encode(texts)`, `rank(query, candidates)`.

    Attributes: `kind` (cross_encoder, sbert or virt), `labels` (class names of `predict`'s
    columns), `path`, `backend` (the runtime backend, for what the server does with it).
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
        """Class probabilities [N, len(labels)] of `(text_a, text_b)` pairs, in input order."""
        pairs = list(pairs)
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
            raise TypeError("pairs: expected a list of (text_a, text_b) tuples")
        a = _texts([p[0] for p in pairs], "pairs (text_a)")
        b = _texts([p[1] for p in pairs], "pairs (text_b)")
        return predict_pairs(self.backend, a, b, batch_size)

    def encode(self, texts, batch_size=64):
        """L2-normalised vectors [N, dim] of single texts (bi-encoders: sbert's sentence embedding,
        VIRT's mean last-layer token state, as the `index` task stores them)."""
        cls = self.backend.model_class
        if cls.encode_output is None:
            raise BackendError(f"{self.path}: a {self.kind} model reads the two texts together and has no "
                               f"vector per text; encode needs an sbert or virt model")
        texts = _texts(texts, "texts")
        if not texts:
            return np.zeros((0, self.backend.hidden_size), np.float32)
        rows = run_in_batches(self.backend, "encode_ids", text_rows(self.backend, texts), batch_size)
        return recall_vectors(cls, rows)

    def rank(self, query, candidates, top_k=None, batch_size=64):
        """`[(index, text, score)]` of `candidates` for `query`, best first (`top_k`: keep that many).

        score: the probability of the positive class, or the cosine for a model without a classifier."""
        if not isinstance(query, str):
            raise TypeError("query: expected a string")
        candidates = _texts(candidates, "candidates")
        if not candidates:
            return []
        if self.has_classifier:
            scores = self.predict([(query, c) for c in candidates], batch_size)[:, positive_class(self.backend)]
        else:
            q, c = self.encode([query], batch_size), self.encode(candidates, batch_size)
            scores = c @ q[0]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [(int(i), candidates[i], float(scores[i])) for i in order]

