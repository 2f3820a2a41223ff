"""SavedModel for TensorFlow Serving: one `tf.Module` per model kind, named signatures.

Layout (TF Serving's): `<base>/<name>/<version>/` with an integer version, one more
than the highest existing one; an existing version is never overwritten. The module
is written under `<base>/<name>/.tmp-<version>-<pid>` (TF Serving ignores names
that are not integers) and renamed into place only once the export passed its
parity checks (export/task.py), so a server watching `<base>/<name>` never loads
a half-written or unchecked version.

Signatures (all outputs float32 unless said; B batch, T tokens, C classes, H hidden):

| kind          | signature         | inputs                                           | outputs |
|---------------|-------------------|--------------------------------------------------|---------|
| all           | `serving_default` | `text_a`, `text_b`: string [B]                   | `probs` [B, C] (sbert: + `cosine` [B]; sbert without classifier: `cosine` only) |
| cross_encoder | `predict_ids`     | `input_ids`, `token_type_ids`, `attention_mask`: int32 [B, T] | as serving_default |
| sbert, virt   | `predict_ids`     | `x_ids`, `x_mask`, `y_ids`, `y_mask`: int32 [B, T] | as serving_default |
| sbert         | `encode`          | `texts`: string [B]                              | `embeddings` [B, H] |
| virt          | `encode`          | `texts`: string [B]                              | `token_states` [B, T, H], `mask` int32 [B, T] |
| virt          | `score`           | `x_states`, `y_states` [B, T, H]; `x_mask`, `y_mask` int32 [B, T] | `probs` [B, C] |
| cross_encoder | `tokenize`        | `text_a`, `text_b`                               | `input_ids`, `token_type_ids`, `attention_mask` int32 [B, T] |
| sbert, virt   | `tokenize`        | `texts`                                          | `input_ids`, `attention_mask` int32 [B, T] |

`tokenize` is the in-graph tokeniser alone (debugging, parity tests). The version
directory also carries `assets/vocab.txt` and `assets/model.json`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import tensorflow as tf

from export import ExportError
from export.text import GraphTokenizer

TEXT_PAIR = ("text_a", "text_b")


def string_spec(name):
    return tf.TensorSpec([None], tf.string, name=name)


class ServingModule(tf.Module):
    """What the SavedModel holds: the model's weights, the in-graph tokeniser, the functions.

    Args:
        loaded: a `LoadedModel` (modeling.model_dir.load_model_dir).
        max_len: longest token row the string signatures produce.
        tokenizer: "fast" (tf-text FastBertTokenizer) or "bert" (BertTokenizer).
    """

    def __init__(self, loaded, max_len, tokenizer="fast"):
        super().__init__(name="serving")
        cls = type(loaded.model)
        self.late_interaction = cls.late_interaction
        self.has_encode = bool(cls.encode_output)
        # Track the weights, not the Keras model object: the functions below are all a server
        # needs, and saving the Keras object graph too costs time and size (~1 s, 20%).
        self.model_weights = list(loaded.model.weights)
        vocab_path = Path(loaded.tokenizer.vocab_file)
        self.tokenizer = GraphTokenizer(vocab_path.read_text(encoding="utf-8").splitlines(),
                                        loaded.tokenizer.lowercase, max_len, tokenizer)
        self.vocab_file = tf.saved_model.Asset(str(vocab_path))
        if loaded.path is not None and (Path(loaded.path) / "model.json").is_file():
            self.meta_file = tf.saved_model.Asset(str(Path(loaded.path) / "model.json"))
        fns = loaded.model.serving_functions()
        self.predict_ids = fns["predict_ids"]
        tok = self.tokenizer
        a_spec, b_spec = string_spec("text_a"), string_spec("text_b")

        # The string signatures call the `tokenize` tf.function: traced once, one copy
        # of the tokeniser graph in the SavedModel, shared by every signature.
        if cls.joint_pair():
            @tf.function(autograph=False, input_signature=[a_spec, b_spec])
            def tokenize(text_a, text_b):
                return tok.encode_pairs(text_a, text_b)
            self.tokenize = tokenize

            @tf.function(autograph=False, input_signature=[a_spec, b_spec])
            def serving_default(text_a, text_b):
                return self.predict_ids(**self.tokenize(text_a, text_b))
        else:
            @tf.function(autograph=False, input_signature=[string_spec("texts")])
            def tokenize(texts):
                return tok.encode_texts(texts)
            self.tokenize = tokenize

            @tf.function(autograph=False, input_signature=[a_spec, b_spec])
            def serving_default(text_a, text_b):
                x, y = self.tokenize(text_a), self.tokenize(text_b)
                return self.predict_ids(x_ids=x["input_ids"], x_mask=x["attention_mask"],
                                        y_ids=y["input_ids"], y_mask=y["attention_mask"])
        if self.has_encode:
            self.encode_ids = fns["encode_ids"]

            @tf.function(autograph=False, input_signature=[string_spec("texts")])
            def encode(texts):
                x = self.tokenize(texts)
                out = self.encode_ids(**x)
                if cls.late_interaction:  # token states need their mask
                    out = {cls.encode_output: out[cls.encode_output], "mask": x["attention_mask"]}
                return out
            self.encode = encode
        if cls.late_interaction:
            self.score = fns["score"]
        self.serving_default = serving_default

    def signatures(self):
        sigs = {"serving_default": self.serving_default, "predict_ids": self.predict_ids,
                "tokenize": self.tokenize}
        if self.has_encode:
            sigs["encode"] = self.encode
        if self.late_interaction:
            sigs["score"] = self.score
        return sigs  # tf.functions: traced by tf.saved_model.save itself (tracing here first would trace twice)


# ----------------------------------------------------------------------------- versions
def versions(model_base):
    """Integer version directories under `<base>/<name>`, ascending."""
    model_base = Path(model_base)
    if not model_base.is_dir():
        return []
    return sorted(int(p.name) for p in model_base.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_base):
    found = versions(model_base)
    return (found[-1] + 1) if found else 1


def stage_saved_model(loaded, model_base, max_len, tokenizer="fast", version=None):
    """Write the SavedModel to a staging directory; returns `(staging_dir, version)`.

    `publish_version` moves it into place. `version` None = next free integer; an
    existing version directory is an error (versions are never overwritten).
    """
    model_base = Path(model_base)
    version = next_version(model_base) if version is None else int(version)
    check_version_free(model_base, version)
    model_base.mkdir(parents=True, exist_ok=True)
    staging = model_base / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    module = ServingModule(loaded, max_len, tokenizer)
    absl_log = logging.getLogger("absl")  # one long warning per renamed captured input: noise
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)
    try:
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
    finally:
        absl_log.setLevel(level)
    return staging, version


def check_version_free(model_base, version):
    target = Path(model_base) / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists: a SavedModel version is never overwritten "
                          f"(the next free version is {next_version(model_base)})")
    return target


def publish_version(staging, model_base, version):
    """Rename the staged SavedModel to `<model_base>/<version>` (refusing to overwrite)."""
    target = check_version_free(model_base, version)
    # Not common.files.replace_dir: a version is never replaced, so there is no old one to move aside.
    os.rename(staging, target)  # same file system: atomic; TF Serving sees all or nothing
    return target


def write_models_config(saved_model_root, base_path_prefix="/models"):
    """`<root>/models.config`: a TF Serving `model_config_list` of every model under `<root>`.

    base_path is `<prefix>/<name>` (the Docker layout: mount `<root>` at /models);
    `models.local.config` has the absolute local paths, for a tensorflow_model_server
    running on this machine. Returns the path of models.config.
    """
    root = Path(saved_model_root)
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and versions(p))

    def render(base):
        blocks = "".join(
            f'  config {{\n    name: "{n}"\n    base_path: "{base(n)}"\n    model_platform: "tensorflow"\n  }}\n'
            for n in names)
        return f"model_config_list {{\n{blocks}}}\n"

    (root / "models.config").write_text(render(lambda n: f"{base_path_prefix.rstrip('/')}/{n}"), encoding="utf-8")
    (root / "models.local.config").write_text(render(lambda n: str((root / n).resolve())), encoding="utf-8")
    return root / "models.config"
