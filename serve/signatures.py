"""TensorFlow Serving's REST API over a `Backend`: signatures, request parsing, response shapes.

Signatures are those of the exported SavedModel (export/saved_model.py), with the string
inputs tokenised in Python by the model's own `PairTokenizer` (the reference the export's
in-graph tokeniser is checked against):

| kind          | signature         | inputs                                      | outputs |
|---------------|-------------------|---------------------------------------------|---------|
| all           | `serving_default` | `text_a`, `text_b` strings                  | `probs` (sbert: and/or `cosine`) |
| cross_encoder | `predict_ids`     | `input_ids`, `token_type_ids`, `attention_mask` | as serving_default |
| sbert, virt   | `predict_ids`     | `x_ids`, `x_mask`, `y_ids`, `y_mask`        | as serving_default |
| sbert         | `encode`          | `texts`                                     | `embeddings` |
| virt          | `encode`          | `texts`                                     | `token_states`, `mask` |
| virt          | `score`           | `x_states`, `x_mask`, `y_states`, `y_mask`  | `probs` |
| all           | `tokenize`        | `text_a`, `text_b` (cross_encoder) / `texts` | ids and masks |

Request and response shapes follow TF Serving: `{"signature_name", "instances": [...]}` (row
format; a bare value per instance when the signature has one input) -> `{"predictions": [...]}`
(bare rows for one output, objects for several); `{"inputs": {...}}` (columnar) ->
`{"outputs": ...}`. Strings may be `{"b64": "..."}`. Errors raise `ApiError(status, message)`,
rendered as `{"error": message}`. Rows of ids need not share one length (TF Serving would
require a rectangular tensor); each row's own inputs must.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.batching import Call
from runtime.rows import invalid_text, pair_rows, text_rows

DT = {"string": "DT_STRING", "int32": "DT_INT32", "float": "DT_FLOAT"}


class ApiError(Exception):
    """A request the server refuses: HTTP `status` and a message for `{"error": ...}`."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Limits:
    max_texts: int = 256  # rows per request
    max_chars: int = 2000  # characters per text


@dataclass
class Signature:
    """`inputs` / `outputs`: name -> (dtype, shape), for metadata; `plan(columns, where)` ->
    a plan (runtime.batching.drive) returning output name -> list of per-row values."""
    name: str
    inputs: dict
    outputs: dict
    plan: object = field(repr=False)


# ----------------------------------------------------------------------------- values
def _where(row_format, name, i):
    return f"instances[{i}].{name}" if row_format else f"inputs.{name}[{i}]"


def check_text(value, where, limits):
    """A request string (or {"b64": ...}) within the character limit."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            value = base64.b64decode(value["b64"], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise ApiError(400, f"{where}: invalid base64 UTF-8 string ({e})") from None
    if not isinstance(value, str):
        raise ApiError(400, f"{where}: expected a string, got {_type(value)}")
    if (problem := invalid_text(value)) is not None:  # JSON's "\ud800" escapes decode to lone surrogates
        raise ApiError(400, f"{where}: {problem}")
    if len(value) > limits.max_chars:
        raise ApiError(400, f"{where}: text of {len(value)} characters is over the limit of "
                            f"{limits.max_chars} (serve.max_chars)")
    return value


def _type(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _array(value, where, want, ndim):
    """A JSON list -> numpy array of `ndim` dims; `want` "i" (integers) or "f" (numbers)."""
    if not isinstance(value, list):
        raise ApiError(400, f"{where}: expected a list, got {_type(value)}")
    try:
        arr = np.asarray(value)
    except ValueError:
        raise ApiError(400, f"{where}: ragged nested lists") from None
    if arr.ndim != ndim or arr.size == 0:
        raise ApiError(400, f"{where}: expected a non-empty {ndim}-d list, got shape {list(arr.shape)}")
    if want == "i" and arr.dtype.kind not in "iu":
        flat = value if ndim == 1 else [v for row in value for v in row]
        i, bad = next(((i, v) for i, v in enumerate(flat) if type(v) is not int), (None, None))
        if i is None:  # all integers, but past int64
            raise ApiError(400, f"{where}: integers out of range")
        raise ApiError(400, f"{where}: expected integers, got {_type(bad)}"
                            + (f" ({bad!r})" if type(bad) is float and math.isfinite(bad) else "") + f" at [{i}]")
    if want == "f":
        if arr.dtype.kind not in "iuf":
            raise ApiError(400, f"{where}: expected numbers")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ApiError(400, f"{where}: non-finite values")
        return arr
    return arr.astype(np.int64)


def _check_range(arr, lo, hi, where, what):
    if arr.min() < lo or arr.max() >= hi:
        raise ApiError(400, f"{where}: {what} must be in [{lo}, {hi - 1}]")


# ----------------------------------------------------------------------------- requests
def load_object(body, keys, expected):
    """A JSON object request body with no keys outside `keys` (`expected` describes them)."""
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"JSON Parse error: {e}") from None
    except RecursionError:
        raise ApiError(400, "JSON Parse error: nested too deeply") from None
    if not isinstance(req, dict):
        raise ApiError(400, f"request body must be a JSON object, got {_type(req)}")
    unknown = sorted(set(req) - set(keys))
    if unknown:
        raise ApiError(400, f"unknown request key(s) {', '.join(map(repr, unknown))} (expected {expected})")
    return req


def parse_request(body, signatures, limits):
    """JSON body -> (signature, columns: input name -> list of row values, row_format)."""
    req = load_object(body, ("signature_name", "instances", "inputs"),
                      "'signature_name' and 'instances' or 'inputs'")
    name = req.get("signature_name", "serving_default")
    if not isinstance(name, str):
        raise ApiError(400, f"signature_name: expected a string, got {_type(name)}")
    if name not in signatures:
        raise ApiError(404, f"Serving signature name: \"{name}\" not found in signature def "
                            f"(available: {', '.join(sorted(signatures))})")
    sig = signatures[name]
    names = list(sig.inputs)
    if ("instances" in req) == ("inputs" in req):
        raise ApiError(400, "Missing 'inputs' or 'instances' key" if "inputs" not in req
                       else "Request has both 'inputs' and 'instances' keys: use one")
    if "instances" in req:
        columns, n = _rows(req["instances"], names)
    else:
        columns, n = _columns(req["inputs"], names)
    if n == 0:
        raise ApiError(400, "empty request: no instances / inputs")
    if n > limits.max_texts:
        raise ApiError(400, f"request has {n} rows, over the limit of {limits.max_texts} (serve.max_texts)")
    return sig, columns, "instances" in req


def _rows(instances, names):
    if not isinstance(instances, list):
        raise ApiError(400, f"'instances' must be a list, got {_type(instances)}")
    single = len(names) == 1 and not any(isinstance(x, dict) and names[0] in x for x in instances)
    if single:  # TF Serving: with one input, each instance is the bare value
        return {names[0]: list(instances)}, len(instances)
    for i, x in enumerate(instances):
        if not isinstance(x, dict):
            raise ApiError(400, f"instances[{i}]: expected an object with {', '.join(names)}, got {_type(x)}")
        _same_keys(x, names, f"instances[{i}]")
    return {n: [x[n] for x in instances] for n in names}, len(instances)


def _columns(inputs, names):
    if not isinstance(inputs, dict) or (len(names) == 1 and names[0] not in inputs):
        if len(names) != 1:
            raise ApiError(400, f"'inputs' must be an object with {', '.join(names)}, got {_type(inputs)}")
        inputs = {names[0]: inputs}
    _same_keys(inputs, names, "inputs")
    sizes = set()
    for n in names:
        if not isinstance(inputs[n], list):
            raise ApiError(400, f"inputs.{n}: expected a list (the batch), got {_type(inputs[n])}")
        sizes.add(len(inputs[n]))
    if len(sizes) > 1:
        raise ApiError(400, f"inputs: batch sizes differ ({', '.join(f'{n}: {len(inputs[n])}' for n in names)})")
    return {n: inputs[n] for n in names}, sizes.pop()


def _same_keys(obj, names, where):
    missing = [n for n in names if n not in obj]
    extra = sorted(set(obj) - set(names))
    if missing:
        raise ApiError(400, f"{where}: missing input {', '.join(map(repr, missing))}")
    if extra:
        raise ApiError(400, f"{where}: unknown input {', '.join(map(repr, extra))} (expected {', '.join(names)})")


def format_response(outputs, sig, row_format):
    """TF Serving's response: one output -> bare values, several -> objects keyed by name."""
    names = [n for n in sig.outputs if n in outputs]
    if row_format:
        if len(names) == 1:
            return {"predictions": outputs[names[0]]}
        n = len(outputs[names[0]])
        return {"predictions": [{k: outputs[k][i] for k in names} for i in range(n)]}
    return {"outputs": outputs[names[0]] if len(names) == 1 else {k: outputs[k] for k in names}}


# ----------------------------------------------------------------------------- signatures
def _tolist(rows, name):
    return [np.asarray(r[name]).tolist() for r in rows]


def _padded(rows, pad=0):
    """Ragged int rows -> equal-length lists (the request's longest), as the SavedModel pads."""
    width = max(len(r) for r in rows)
    return [list(map(int, r)) + [pad] * (width - len(r)) for r in rows]


class SignatureSet:
    """The signatures of one backend, with the validation they need (vocabulary size,
    positions, hidden width). `signatures`: name -> Signature."""

    def __init__(self, backend, limits):
        self.backend, self.limits = backend, limits
        arch = backend.architecture
        self.vocab_size = int(arch["vocab_size"])
        self.type_vocab = int(arch.get("type_vocab_size", 2))
        self.max_position = int(arch["max_position"])
        self.signatures = self._build()

    def _texts(self, columns, name, row_format):
        return [check_text(v, _where(row_format, name, i), self.limits) for i, v in enumerate(columns[name])]

    def _ids(self, columns, names, row_format):
        """Validated id rows: each row's inputs are 1-d integer lists of one length."""
        rows = []
        for i in range(len(columns[names[0]])):
            row = {}
            for n in names:
                where = _where(row_format, n, i)
                arr = _array(columns[n][i], where, "i", 1)
                if len(arr) > self.max_position:
                    raise ApiError(400, f"{where}: {len(arr)} tokens, over the model's {self.max_position} positions")
                if n.endswith("mask"):
                    _check_range(arr, 0, 2, where, "mask values")
                elif n == "token_type_ids":
                    _check_range(arr, 0, self.type_vocab, where, "token type ids")
                else:
                    _check_range(arr, 0, self.vocab_size, where, "token ids")
                row[n] = arr.astype(np.int32)
            self._same_length(row, row_format, i)
            rows.append(row)
        return rows

    def _same_length(self, row, row_format, i):
        for side in ("x_", "y_", ""):
            group = [n for n in row if n.startswith(side) and (side or not n.startswith(("x_", "y_")))]
            lengths = {len(row[n]) for n in group}
            if len(lengths) > 1:
                raise ApiError(400, f"{_where(row_format, group[0], i)}: {', '.join(group)} differ in length")
            mask = next((n for n in group if n.endswith("mask")), None)
            if mask is not None and not row[mask].any():
                raise ApiError(400, f"{_where(row_format, mask, i)}: no token is unmasked")

    def _states(self, columns, row_format):
        h = self.backend.hidden_size
        rows = []
        for i in range(len(columns["x_states"])):
            row = {}
            for side in ("x", "y"):
                where = _where(row_format, f"{side}_states", i)
                states = _array(columns[f"{side}_states"][i], where, "f", 2)
                if states.shape[1] != h or states.shape[0] > self.max_position:
                    raise ApiError(400, f"{where}: shape {list(states.shape)}, expected [T <= {self.max_position}, {h}]")
                mask = _array(columns[f"{side}_mask"][i], _where(row_format, f"{side}_mask", i), "i", 1)
                _check_range(mask, 0, 2, _where(row_format, f"{side}_mask", i), "mask values")
                row[f"{side}_states"], row[f"{side}_mask"] = states, mask.astype(np.int32)
            self._same_length(row, row_format, i)
            rows.append(row)
        return rows

    def _build(self):
        be = self.backend
        cls, n_cls = be.spec, max(len(be.labels), 1)
        out_shapes = {"probs": ("float", (-1, n_cls)), "cosine": ("float", (-1,))}
        pred_out = {k: out_shapes[k] for k in be.functions["predict_ids"].outputs}
        strings = {"text_a": ("string", (-1,)), "text_b": ("string", (-1,))}
        ids_names = cls.ids_inputs
        ids_in = {n: ("int32", (-1, -1)) for n in ids_names}

        def predict(rows):
            out = yield Call(be, "predict_ids", rows)
            return {k: _tolist(out, k) for k in pred_out}

        sigs = [
            Signature("serving_default", strings, pred_out,
                      lambda c, rf: predict(pair_rows(be, self._texts(c, "text_a", rf), self._texts(c, "text_b", rf)))),
            Signature("predict_ids", ids_in, pred_out, lambda c, rf: predict(self._ids(c, ids_names, rf))),
        ]
        if cls.joint_pair():
            tok_out = {n: ("int32", (-1, -1)) for n in cls.ids_inputs}
            sigs.append(Signature("tokenize", strings, tok_out, self._tokenize_pairs))
        else:
            tok_out = {"input_ids": ("int32", (-1, -1)), "attention_mask": ("int32", (-1, -1))}
            sigs.append(Signature("tokenize", {"texts": ("string", (-1,))}, tok_out, self._tokenize_texts))
        h = be.hidden_size
        key = cls.encode_output
        if key and not cls.late_interaction:  # one vector per text
            def encode(c, rf):
                out = yield Call(be, "encode_ids", text_rows(be, self._texts(c, "texts", rf)))
                return {key: _tolist(out, key)}
            sigs.append(Signature("encode", {"texts": ("string", (-1,))}, {key: ("float", (-1, h))}, encode))
        if cls.late_interaction:  # token states, padded to the request's longest text, and their mask
            def encode(c, rf):
                rows = text_rows(be, self._texts(c, "texts", rf))
                out = yield Call(be, "encode_ids", rows)
                width = max(len(r["input_ids"]) for r in rows)
                states = [np.pad(o[key], ((0, width - len(o[key])), (0, 0))).tolist() for o in out]
                return {key: states, "mask": _padded([r["attention_mask"] for r in rows])}

            def score(c, rf):
                out = yield Call(be, "score", self._states(c, rf))
                return {"probs": _tolist(out, "probs")}
            sigs.append(Signature("encode", {"texts": ("string", (-1,))},
                                  {key: ("float", (-1, -1, h)), "mask": ("int32", (-1, -1))}, encode))
            states_in = {"x_states": ("float", (-1, -1, h)), "x_mask": ("int32", (-1, -1)),
                         "y_states": ("float", (-1, -1, h)), "y_mask": ("int32", (-1, -1))}
            sigs.append(Signature("score", states_in, {"probs": out_shapes["probs"]}, score))
        return {s.name: s for s in sigs}

    def _tokenize_pairs(self, c, rf):
        rows = pair_rows(self.backend, self._texts(c, "text_a", rf), self._texts(c, "text_b", rf))
        pad = self.backend.tokenizer.pad_id
        return {"input_ids": _padded([r["input_ids"] for r in rows], pad),
                "token_type_ids": _padded([r["token_type_ids"] for r in rows]),
                "attention_mask": _padded([r["attention_mask"] for r in rows])}

    def _tokenize_texts(self, c, rf):
        rows = text_rows(self.backend, self._texts(c, "texts", rf))
        return {"input_ids": _padded([r["input_ids"] for r in rows], self.backend.tokenizer.pad_id),
                "attention_mask": _padded([r["attention_mask"] for r in rows])}

    # ------------------------------------------------------------------ metadata
    def metadata(self):
        """GET /v1/models/<name>/metadata, TF Serving's JSON shape."""
        be = self.backend

        def tensors(specs, prefix):
            return {n: {"dtype": DT[dt], "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in shape],
                                                          "unknown_rank": False},
                        "name": f"{prefix}{n}:0"} for n, (dt, shape) in specs.items()}

        defs = {s.name: {"inputs": tensors(s.inputs, f"{s.name}_"), "outputs": tensors(s.outputs, "Identity_"),
                         "method_name": "tensorflow/serving/predict", "defaults": {}}
                for s in self.signatures.values()}
        return {"model_spec": {"name": be.name, "signature_name": "", "version": str(be.version)},
                "metadata": {"signature_def": {"signature_def": defs}},
                "textmatch": {"kind": be.kind, "labels": be.labels, "runtime": be.runtime,
                              "max_seq_len": be.max_len,
                              # what runs: each function's file, the precision, and `auto`'s pick and why
                              "files": {fn: Path(f).name for fn, f in (getattr(be, "files", None) or {}).items()},
                              "precision": getattr(be, "precision", "f32"), "selection": be.selection}}


def status(backend):
    """GET /v1/models/<name>: TF Serving's model_version_status."""
    return {"model_version_status": [{"version": str(backend.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
