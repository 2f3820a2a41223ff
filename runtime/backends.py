"""What the server, search, export's checks and bench run: a model's ids-level functions behind one interface.

    backend = open_model("exports/qm")                 # export dir -> onnxruntime (default)
    backend = open_model("exports/qm", backend="tf")   # export dir -> its SavedModel
    backend = open_model("runs/virt/<stamp>/model")    # model dir  -> Keras (no export step)
    backend.run("predict_ids", {"input_ids": ids, "token_type_ids": types, "attention_mask": mask})

Functions (`backend.functions`, the ones export/saved_model.py exports; which a kind has, and
their names, are its model class's attributes, modeling/task_model.py, read as plain data:
`backend.spec`, modeling/serving_spec.py):

| function      | kinds         | inputs                                              | outputs |
|---------------|---------------|-----------------------------------------------------|---------|
| `predict_ids` | cross_encoder | `input_ids`, `token_type_ids`, `attention_mask`     | `probs` |
| `predict_ids` | sbert, virt   | `x_ids`, `x_mask`, `y_ids`, `y_mask`                | `probs` and/or `cosine` (sbert) |
| `encode_ids`  | sbert, virt   | `input_ids`, `attention_mask`                       | `embeddings` [B, H] / `token_states` [B, T, H] |
| `score`       | virt          | `x_states`, `x_mask`, `y_states`, `y_mask`          | `probs` |

A model directory is served through Keras (the same `serving_functions()` the export
converts) rather than exported on the fly: an export costs a SavedModel, tf2onnx
conversions and parity checks (about a minute for MiniLM-L6) before the first
request, for a model someone is still iterating on; `--task export` is the way
to get the ONNX speed.

An export directory is opened without importing TensorFlow or Keras (onnx backend): its
model.json is read as JSON, its kind's serving facts from the `serving.json` the export wrote,
its tokenizer is `tokenizers`' (requirements-serve.txt is all it needs: tests/test_serve.py runs it so).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from modeling.serving_spec import spec_of
from runtime.onnx import FUSED_NAMES, ONNX_FILES  # file names only: onnxruntime loads lazily
from runtime.openvino import INT8_FILE, OV_FILES  # the same for openvino

log = logging.getLogger(__name__)

SCORE_INPUTS = ("x_states", "x_mask", "y_states", "y_mask")  # VIRT's `score` on cached token states


class BackendError(ValueError):
    """A model path that cannot be served; the message names the path and what is missing."""


@dataclass(frozen=True)
class Function:
    """One ids-level function: input names in call order, output names, the outputs that
    carry a sequence axis (trimmed back to each row's own length after batching), and whether
    it runs the encoder, whose cost grows with rows x padded tokens (serve.max_batch_tokens
    applies; VIRT's `score` head on cached states is batched by rows only)."""
    inputs: tuple
    outputs: tuple
    seq_outputs: tuple = ()
    encoder: bool = True


def functions_of(spec):
    """`Function`s of a model (its kind's `ServingSpec`, modeling.serving_spec)."""
    fns = {"predict_ids": Function(tuple(spec.ids_inputs), tuple(spec.outputs))}
    if spec.encode_output:
        seq = (spec.encode_output,) if spec.late_interaction else ()
        fns["encode_ids"] = Function(("input_ids", "attention_mask"), (spec.encode_output,), seq)
    if spec.late_interaction:
        fns["score"] = Function(SCORE_INPUTS, ("probs",), encoder=False)
    return fns


class Backend:
    """A model's ids-level functions, its tokenizer and what the server reports about it.

    Attributes: kind, spec (the kind's `ServingSpec`: what its functions are), name,
    version (int), labels, tokenizer (PairTokenizer), max_len (longest token row the server
    produces), architecture (the encoder's config dict), functions (name -> Function), source
    (path), runtime ("onnx", "openvino", "tf" or "keras"), selection (what `auto` picked and why, else None).
    """

    runtime = "?"
    selection = None

    def __init__(self, path, meta, spec, tokenizer, name, version, max_len):
        self.path, self.meta, self.spec, self.tokenizer = Path(path), meta, spec, tokenizer
        self.kind = meta["kind"]
        self.labels = list(meta.get("labels") or [])
        self.architecture = dict(meta["model"]["config"]["encoder"])
        self.name, self.version, self.max_len = name, int(version), int(max_len)
        self.functions = functions_of(spec)

    @property
    def hidden_size(self):
        return int(self.architecture["hidden_size"])

    def run(self, fn, feeds):
        """`feeds`: input name -> padded numpy array; returns output name -> numpy array."""
        raise NotImplementedError

    def describe(self):
        return f"{self.kind} model {self.name!r} version {self.version} ({self.runtime}, {self.path})"


class OnnxBackend(Backend):
    runtime = "onnx"

    def __init__(self, path, meta, spec, tokenizer, name, version, max_len, int8=False, threads=None, fused=True):
        super().__init__(path, meta, spec, tokenizer, name, version, max_len)
        from runtime.onnx import session

        self.files = {fn: onnx_file(self.path / "onnx", fn, int8 and fn == "predict_ids", fused)
                      for fn in ONNX_FILES if fn in self.functions}
        self.sessions = {}
        for fn, file in self.files.items():
            if not file.is_file():
                raise BackendError(_missing(file, int8 and fn == "predict_ids", "onnx"))
            self.sessions[fn] = session(file, threads)
        # The ONNX file is the authority on its outputs (sbert: cosine and/or probs).
        names = tuple(o.name for o in self.sessions["predict_ids"].get_outputs())
        self.functions["predict_ids"] = Function(self.functions["predict_ids"].inputs, names)

    def describe(self):
        return (f"{self.kind} model {self.name!r} version {self.version} (onnx: "
                f"{', '.join(f.name for f in self.files.values())}; {self.path})")

    def run(self, fn, feeds):
        sess = self.sessions[fn]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, {k: feeds[k] for k in self.functions[fn].inputs})))


class OpenVinoBackend(Backend):
    """The export's OpenVINO IR (openvino/*.xml, runtime/openvino.py): bf16 where the CPU has it and the
    export's bf16 check passed, else f32; `int8`: openvino/model.int8.xml for predict_ids."""
    runtime = "openvino"

    def __init__(self, path, meta, spec, tokenizer, name, version, max_len, int8=False, threads=None,
                 precision="auto"):
        super().__init__(path, meta, spec, tokenizer, name, version, max_len)
        from runtime.openvino import Runner

        self.precision = openvino_precision(self.path, precision)
        self.files = {fn: self.path / "openvino" / (INT8_FILE if int8 and fn == "predict_ids" else OV_FILES[fn])
                      for fn in OV_FILES if fn in self.functions}
        self.sessions = {}
        for fn, file in self.files.items():
            if not file.is_file():
                raise BackendError(_missing(file, int8 and fn == "predict_ids", "openvino"))
            self.sessions[fn] = Runner(file, threads, self.precision)
        self.functions["predict_ids"] = Function(self.functions["predict_ids"].inputs,
                                                 tuple(self.sessions["predict_ids"].outputs))

    def describe(self):
        return (f"{self.kind} model {self.name!r} version {self.version} (openvino {self.precision}: "
                f"{', '.join(f.name for f in self.files.values())}; {self.path})")

    def run(self, fn, feeds):
        return self.sessions[fn]({k: feeds[k] for k in self.functions[fn].inputs})


def openvino_precision(export_dir, requested="auto", status=None):
    """The precision an export's IR runs at: runtime.openvino.precision, except f32 when the export's
    bf16 check refused bf16 (parity.json status `openvino.predict_ids.bf16`: refused; `status`: that
    dict, before parity.json is written)."""
    from runtime.openvino import precision

    status = _report(export_dir).get("status", {}) if status is None else status
    if requested == "auto" and status.get("openvino.predict_ids.bf16") == "refused":
        log.info("openvino: the export's bf16 check refused bf16 (%s): running in f32", Path(export_dir) / "parity.json")
        return "f32"
    return precision(requested)


def _report(export_dir):
    try:
        return json.loads((Path(export_dir) / "parity.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def onnx_file(onnx_dir, fn, int8=False, fused=True):
    """The file serving `fn` in an export's onnx/ directory: the fused graph when the export
    published one (`fused`: preferred), else the portable one; `int8` for predict_ids' int8 copy.

    predict_ids: model.fused.int8.onnx > model.int8.onnx (int8), model.fused.onnx > model.onnx;
    encode_ids: encode.fused.onnx > encode.onnx; score: score.onnx. `fused=False` reverses the
    preference: the portable graph is published beside the fused one only with
    export.portable_onnx, so without it the fused graph is what there is. A missing preferred
    file is no error (an export without fusion, or whose fused check withheld it); the portable
    name is returned when neither exists, for the caller's "missing" message."""
    plain = "model.int8.onnx" if int8 else ONNX_FILES[fn]
    names = [FUSED_NAMES[plain], plain] if plain in FUSED_NAMES else [plain]
    for name in names if fused else names[::-1]:
        if (Path(onnx_dir) / name).is_file():
            return Path(onnx_dir) / name
    return Path(onnx_dir) / plain


def _missing(file, int8, runtime):
    """Why an export directory has no `file` (of its `runtime`'s directory), and what to do about it."""
    export_dir = file.parent.parent
    # the int8 copy of the published graph: model.fused.int8.onnx when the fused graph was published
    names = [(FUSED_NAMES["model.int8.onnx"], "onnx.fused.int8")] if runtime == "onnx" else []
    kept = [(export_dir / "withheld" / name, key) for name, key in (*names, (file.name, f"{runtime}.int8"))]
    withheld, key = next(((p, k) for p, k in kept if p.is_file()), kept[-1])
    if int8 and withheld.is_file():  # export's int8 check failed: the file was kept aside (docs/export.md)
        reason = ((_report(export_dir).get("checks") or {}).get(key) or {}).get("reason")
        return (f"{file}: missing: the export's int8 parity check withheld it"
                + (f" ({reason})" if reason else "") + f"; it is in {withheld}. To serve it anyway, export again "
                f"with export.int8_force=true (or copy it into {runtime}/, docs/export.md); serve.int8=false serves fp32")
    return (f"{file}: missing; export with export.formats including {runtime}"
            + (" and export.int8=true" if int8 else "") + " (or use the tf backend)")


class _TFBackend(Backend):
    """Shared by the SavedModel and Keras backends: call tf callables, return numpy."""

    def run(self, fn, feeds):
        import tensorflow as tf

        out = self.callables[fn](**{k: tf.constant(feeds[k]) for k in self.functions[fn].inputs})
        return {k: v.numpy() for k, v in out.items() if k in self.functions[fn].outputs}


class SavedModelBackend(_TFBackend):
    runtime = "tf"

    def __init__(self, path, meta, spec, tokenizer, export_name, version, max_len, threads=None, name=None):
        super().__init__(path, meta, spec, tokenizer, name or export_name, version, max_len)
        _tf_threads(threads)
        import tensorflow as tf
        import tensorflow_text  # noqa: F401  registers the tf-text ops of the string signatures

        sm_dir = self.path / "saved_model" / export_name / str(version)
        if not (sm_dir / "saved_model.pb").is_file():
            raise BackendError(f"{sm_dir}: no SavedModel there (serve.backend=tf needs the export's saved_model/)")
        self.saved_model = sm = tf.saved_model.load(str(sm_dir))
        self.callables = {"predict_ids": sm.signatures["predict_ids"]}
        if "encode_ids" in self.functions:
            self.callables["encode_ids"] = sm.encode_ids  # kept as a tf.function attribute, not a signature
        if "score" in self.functions:
            self.callables["score"] = sm.signatures["score"]


class KerasBackend(_TFBackend):
    runtime = "keras"

    def __init__(self, loaded, name, max_len, threads=None):
        super().__init__(loaded.path, loaded.meta, spec_of(loaded.kind_class, loaded.meta["model"]["config"]),
                         loaded.tokenizer, name, 1, max_len)
        _tf_threads(threads)
        self.loaded = loaded
        self.callables = loaded.model.serving_functions()


def _tf_threads(threads):
    if threads:
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already initialised (tests, a second backend): keep its pool
            pass


def is_export_dir(path):
    return (Path(path) / "parity.json").is_file() and (Path(path) / "model.json").is_file()


def export_info(path):
    """(name, version, max_seq_len) of the latest export into an export directory."""
    report_file = Path(path) / "parity.json"
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
        return str(report["name"]), int(report["version"]), int(report["max_seq_len"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BackendError(f"{report_file}: not a finished export's report ({e})") from None


def model_spec(path):
    """(model.json's content, `ServingSpec`) of a model or export directory.

    An export directory's spec is its `serving.json` (no Keras import); one exported before that
    file existed, and a model directory, get theirs from the kind's model class (imports Keras)."""
    from modeling.checkpoints import CheckpointError
    from modeling.meta import read_meta_json
    from modeling.serving_spec import SpecError, read_spec

    try:
        meta = read_meta_json(path)
        spec = read_spec(path) if is_export_dir(path) else None
    except (CheckpointError, SpecError) as e:
        raise BackendError(f"{e} (expected an export directory or a model directory)") from None
    if spec is None:
        from modeling.model_dir import kind_class

        try:
            spec = spec_of(kind_class(meta, Path(path) / "model.json"), meta["model"]["config"])
        except CheckpointError as e:
            raise BackendError(f"{e} (expected an export directory or a model directory)") from None
    elif spec.kind != meta["kind"]:
        raise BackendError(f"{Path(path) / 'serving.json'}: a {spec.kind} spec beside a {meta['kind']} model.json; "
                           "export the model again")
    return meta, spec


BACKENDS = ("auto", "onnx", "openvino", "tf")
# `auto` without timings in parity.json (an export from before them): the order of
# docs/inference.md's measurements on this project's CPU (AVX512_BF16, VNNI).
AUTO_ORDER = (("openvino", True), ("openvino", False), ("onnx", True), ("onnx", False))


def _candidate_file(export_dir, runtime, int8, fused=True):
    if runtime == "onnx":
        return onnx_file(Path(export_dir) / "onnx", "predict_ids", int8, fused)
    return Path(export_dir) / "openvino" / (INT8_FILE if int8 else OV_FILES["predict_ids"])


def published_candidates(export_dir, spec, fused=True):
    """[(runtime, int8, predict_ids file)] an export published (a withheld file is not in onnx/ or openvino/),
    in AUTO_ORDER; a runtime counts only with every file the kind's functions need."""
    fns = functions_of(spec)
    out = []
    for runtime, int8 in AUTO_ORDER:
        file = _candidate_file(export_dir, runtime, int8, fused)
        others = [onnx_file(Path(export_dir) / "onnx", fn, False, fused) if runtime == "onnx"
                  else Path(export_dir) / "openvino" / OV_FILES[fn] for fn in OV_FILES if fn in fns and fn != "predict_ids"]
        if file.is_file() and all(f.is_file() for f in others):
            out.append((runtime, int8, file))
    return out


def timing_key(runtime, int8):
    return runtime + (".int8" if int8 else "")


def pick_backend(export_dir, spec, int8=None, fused=True):
    """`auto`'s choice for an export directory: (runtime, int8, why). The fastest published predict_ids
    artifact by the export's timings (parity.json `timings`: median ms per batch of the parity pairs,
    measured by the export as the runtime runs it); `int8` None: int8 files compete (they passed their
    gate, or were forced), False: fp32 only, True: int8 only. Without timings for any candidate,
    the first in AUTO_ORDER. Nothing published: ("onnx", int8) (whose opening says what is missing)."""
    cands = [c for c in published_candidates(export_dir, spec, fused) if int8 is None or c[1] == bool(int8)]
    timings = _report(export_dir).get("timings") or {}
    timed = [(timings[timing_key(r, q)]["ms_per_batch"], r, q) for r, q, f in cands
             if timings.get(timing_key(r, q), {}).get("file") == f.name]
    if timed:
        ms, runtime, q = min(timed)
        others = ", ".join(f"{timing_key(r, i)} {t:.1f}" for t, r, i in sorted(timed))
        return runtime, q, f"fastest in the export's timings (ms per batch: {others})"
    if cands:
        runtime, q, _ = cands[0]
        return runtime, q, "no timings in parity.json: the fixed order " + " > ".join(
            timing_key(r, i) for r, i in AUTO_ORDER)
    return "onnx", bool(int8), "nothing published for auto to choose from"


def time_candidates(export_dir, spec, feeds, status=None, threads=None, rounds=3):
    """parity.json's `timings`: for each published predict_ids artifact (`published_candidates`), the median
    ms per call over `rounds` passes of `feeds` (input dicts: a few batches of the parity pairs) after one
    warm-up pass, run as its backend runs it (openvino at the precision it would pick, given the export's
    `status`)."""
    from runtime.onnx import session

    out = {}
    for runtime, int8, file in published_candidates(export_dir, spec):
        if runtime == "onnx":
            sess = session(file, threads)
            names = [o.name for o in sess.get_inputs()]
            run, prec = (lambda f, sess=sess, names=names: sess.run(None, {k: f[k] for k in names})), "f32"
        else:
            from runtime.openvino import Runner

            prec = openvino_precision(export_dir, "auto", status)
            run = Runner(file, threads, prec)
        for f in feeds:
            run(f)
        times = []
        for _ in range(rounds):
            for f in feeds:
                t0 = time.perf_counter()
                run(f)
                times.append(time.perf_counter() - t0)
        out[timing_key(runtime, int8)] = {"file": file.name, "precision": prec,
                                          "ms_per_batch": round(1000 * float(np.median(times)), 3),
                                          "batches": len(feeds), "rounds": rounds,
                                          "rows": int(sum(len(next(iter(f.values()))) for f in feeds))}
    return out


def open_model(path, backend="auto", int8=None, threads=None, name=None, kinds=None, fused=True, encoders=False):
    """A `Backend` for an export directory (`backend` auto|onnx|openvino|tf) or a model directory (Keras).

    `auto` (`pick_backend`): the fastest artifact the export published and checked; `backend.selection`
    says what was picked and why (logged, and in the server's model metadata). `int8`: True serves the
    int8 predict_ids file, False never, None (the default) lets `auto` use it when its gate passed
    (explicit backends: fp32). `fused`: the onnx backend prefers the export's fused graphs (`onnx_file`);
    `backend.files` says which file each function runs.

    `kinds`: accepted model kinds; `encoders`: only kinds with encode_ids (an index's model). Both are
    checked before loading, from the spec (no model class is imported for an export).
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend {backend!r}: expected {', '.join(BACKENDS)}")
    if path is None:
        raise BackendError("no model given: set it to an export directory (--task export) or a model directory")
    path = Path(path)
    if not path.is_dir():
        raise BackendError(f"{path}: a file, not a model or export directory (give the directory that holds "
                           f"model.json)" if path.is_file() else f"{path}: no such directory")
    meta, spec = model_spec(path)
    if (kinds and meta["kind"] not in kinds) or (encoders and not spec.encode_output):
        raise BackendError(f"{path}: a {meta['kind']} model, expected {' or '.join(kinds or servable_kinds(True))}")
    if not spec.servable:
        raise BackendError(f"{path}: a {meta['kind']} model cannot be served ({', '.join(servable_kinds())})")
    if is_export_dir(path):
        from modeling.meta import check_sizes
        from modeling.tokenization import PairTokenizer

        export_name, version, max_len = export_info(path)
        tok = PairTokenizer(path / "vocab.txt", meta["tokenizer"]["lowercase"])
        sizes = meta["model"]["config"]["encoder"]  # the encoder's config, as model_dir.load_model_dir checks it
        check_sizes(path, meta, SimpleNamespace(vocab_size=sizes["vocab_size"], max_position=sizes["max_position"]), tok)
        selection = None
        if backend == "auto":
            backend, int8, why = pick_backend(path, spec, int8, fused)
            selection = {"backend": backend, "int8": bool(int8), "why": why}
        args = (path, meta, spec, tok, name or export_name, version, max_len)
        if backend == "tf":
            opened = SavedModelBackend(path, meta, spec, tok, export_name, version, max_len, threads, name)
        elif backend == "openvino":
            opened = OpenVinoBackend(*args, bool(int8), threads)
        else:
            opened = OnnxBackend(*args, bool(int8), threads, fused)
        if selection is not None:
            selection["files"] = {fn: f.name for fn, f in opened.files.items()}
            selection["precision"] = getattr(opened, "precision", "f32")
            log.info("backend auto picked %s%s (%s; %s): %s", backend, " int8" if selection["int8"] else "",
                     selection["precision"], selection["files"]["predict_ids"], selection["why"])
        opened.selection = selection
        return opened
    if (path / "onnx").is_dir() or (path / "saved_model").is_dir():
        raise BackendError(f"{path}: an export directory without parity.json (a failed or unfinished export?)")
    if int8:
        raise BackendError(f"{path}: int8 needs an export directory (--task export writes onnx/model.int8.onnx)")
    from modeling.model_dir import load_model_dir

    loaded = load_model_dir(path)
    return KerasBackend(loaded, name or _dir_name(path), loaded.max_seq_len, threads)


def servable_kinds(encoders=False):
    """Every kind the runtime can serve and the export can export (`encoders`: those with encode_ids,
    which can build an index), sorted. Imports every model class: for messages and listings."""
    from modeling.model_dir import discover_kinds

    return sorted(k for k, cls in discover_kinds().items() if cls.servable and (cls.encode_output or not encoders))


def _dir_name(path):
    return default_name(path, read_kind(path))


NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")


def default_name(model_dir, kind):
    """A model's name (the server's, the SavedModel's): the model dir's parent name
    (`runs/virt/<stamp>/model` -> `<stamp>`) only if it is a usable name, i.e. starts with a letter,
    else its own name unless that is `model`, else the kind."""
    p = Path(model_dir).resolve()
    for cand in (p.parent.name, p.name if p.name != "model" else ""):
        cand = re.sub(r"[^A-Za-z0-9_.-]", "_", cand)
        if NAME_RE.match(cand):
            return cand
    return kind


def read_kind(path):
    from modeling.model_dir import read_meta

    return read_meta(path)["kind"]


def predict_pairs(backend, text_a, text_b, batch_size=64, progress=None):
    """`predict_ids` probabilities [N, C] of pairs through any backend, in input order.

    Pairs are sorted by token length and padded per batch (real texts are short: a batch pads
    to its own longest row, not to max_len): the command-line run of runtime.batching."""
    from runtime.batching import run_in_batches
    from runtime.rows import pair_rows

    if "probs" not in backend.functions["predict_ids"].outputs:
        raise BackendError(f"{backend.path}: this {backend.kind} model has no classifier (outputs "
                           f"{', '.join(backend.functions['predict_ids'].outputs)}); predict needs probabilities")
    out = run_in_batches(backend, "predict_ids", pair_rows(backend, text_a, text_b), batch_size, progress)
    return np.stack([r["probs"] for r in out]) if out else np.zeros((0, len(backend.labels)), np.float32)
