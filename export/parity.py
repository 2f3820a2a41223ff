"""Parity of every exported artifact with the Keras model, on a batch of real-looking pairs.

The reference is the Keras model on the Python tokenizer's ids (PairTokenizer, the
training path). Checks (max |diff| of the outputs, over all pairs):

    saved_model.serving_default   strings in, in-graph tokenisation    <= 1e-5
    saved_model.predict_ids       same ids as Keras                    <= 1e-5
    saved_model.encode / .score   (sbert, virt)                        <= 1e-5
    frozen.predict_ids                                                 <= 1e-5
    hf                the hf/ folder read back by modeling's loader    <= 1e-5  (export/hf.py)
    onnx.predict_ids (+ onnx.encode_ids, onnx.score, onnx.opt-<level>) <= 1e-4
    onnx.fused, onnx.fused.encode_ids (onnxruntime-fused graphs)      <= 1e-4
    openvino.predict_ids (+ .encode_ids, .score)  the IR, fp16 weights, run in f32   <= 1e-2
                      (fp16 rounding of the weights: 5.7e-3 on MRPC's 1,725 pairs, docs/export.md)
    onnx.int8, onnx.fused.int8, openvino.int8, openvino.predict_ids.bf16 (bf16 execution of model.xml)
                      labelled data.test: withheld only when the pairs show (one-sided 95%,
                      exact binomial on the discordant pairs) an accuracy drop above
                      export.int8_max_accuracy_drop (1 point); otherwise label agreement >=
                      export.int8_min_agreement (0.95) on the pairs whose fp32 margin >=
                      export.int8_min_margin (0.1).

int8 is judged by what users care about (accuracy), not by equality with Keras: dynamic
quantisation moves probabilities (a few hundredths on the tests' tiny models, up to 0.25 on
a 6-layer MiniLM), which flips pairs near the decision boundary, and flipping a pair whose
fp32 margin (top-1 minus top-2 probability) is m costs a calibrated model about m in
expected accuracy. So near-boundary flips are counted and reported, not gated; the
agreement gate (0.95: generated pairs are out of the model's domain, see docs/export.md)
is there to catch a broken int8 model. A failed int8 check withholds only the int8 file
(export/task.py); the fp32 checks are exact and still block everything.

`tokenization` records how many pairs the in-graph tokeniser encodes differently
from the Python one (reported with examples; a difference shows up as a failed
serving_default check). Pairs: data.test when set, else data.make_sample texts
(language picked from the vocabulary), plus a few edge cases (accents, case,
full-width punctuation, CJK, unknown characters, empty text).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from modeling.tokenization import pad_ids
from training.metrics import CONFIDENCE, drop_lower_bound, pairs_to_decide

TOLERANCES = {"saved_model": 1e-5, "frozen": 1e-5, "onnx": 1e-4, "hf": 1e-5, "openvino": 1e-2}

EDGE_PAIRS = [
    ("How do I reset my PASSWORD?", "how do i reset my password"),
    ("Café naïve résumé, ÅNGSTRÖM", "cafe naive resume, angstrom"),
    ("我想修改登录密码，怎么办？", "如何更改密码！"),
    ("Hello 世界! e-mail: a@b.com", "hello world (mixed 中文 and English)"),
    ("", "an empty first text"),
    ("   ", "?"),
    ("unknown ☃ chars 😀 ＡＢＣ１２３", "Straße ﬁ ½ x²"),
    ("literal [SEP] and [CLS] tokens", "tab\tand\nnewline\u00a0nbsp"),
]


def pick_lang(vocab):
    """en | zh | mixed, from the share of CJK characters among the vocabulary's words."""
    cjk = sum(1 for t in vocab if len(t) == 1 and "\u4e00" <= t <= "\u9fff")
    latin = sum(1 for t in vocab if t.isascii() and t.isalpha() and len(t) > 1)
    share = cjk / max(cjk + latin, 1)
    return "zh" if share > 0.6 else "en" if share < 0.1 else "mixed"


def parity_pairs(cfg, loaded, n):
    """`(text_a, text_b, labels_or_None, source)`."""
    from data import make_sample, read_pairs

    d = cfg.data
    if d.test:
        pairs = read_pairs(d.test, format=d.format, text_a=d.text_a, text_b=d.text_b, label=d.label,
                           labels=loaded.labels, on_bad_row=d.on_bad_row,
                           labels_name=f"the model's labels ({Path(loaded.path) / 'model.json'})")
        a, b, labels = pairs.text_a, pairs.text_b, pairs.labels
        if d.max_rows:
            a, b = a[:d.max_rows], b[:d.max_rows]
            labels = labels[:d.max_rows] if labels is not None else None
        return list(a), list(b), labels, str(d.test)
    vocab = Path(loaded.tokenizer.vocab_file).read_text(encoding="utf-8").splitlines()
    lang = pick_lang(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        files = make_sample(tmp, n_train=0, n_valid=0, n_test=n, lang=lang, seed=1)
        pairs = read_pairs(files["test"])
    a = list(pairs.text_a) + [p[0] for p in EDGE_PAIRS]
    b = list(pairs.text_b) + [p[1] for p in EDGE_PAIRS]
    return a, b, None, f"data.make_sample(lang={lang}, n={n}) + {len(EDGE_PAIRS)} edge cases"


def python_features(loaded, a, b, max_len):
    """Python-tokenised, padded ids for the ids signature, and the unpadded rows."""
    tok = loaded.tokenizer
    if loaded.kind_class.joint_pair():
        enc = tok.encode_pairs(a, b, max_len)
        ids, mask = pad_ids(enc["input_ids"], tok.pad_id)
        types, _ = pad_ids(enc["token_type_ids"], 0)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}, enc
    x, y = tok.encode_texts(a, max_len), tok.encode_texts(b, max_len)
    x_ids, x_mask = pad_ids(x, tok.pad_id)
    y_ids, y_mask = pad_ids(y, tok.pad_id)
    return {"x_ids": x_ids, "x_mask": x_mask, "y_ids": y_ids, "y_mask": y_mask}, {"x": x, "y": y}


def keras_outputs(loaded, feats):
    """The Keras model's outputs (probs and/or cosine) on padded ids: the reference."""
    return {k: v.numpy() for k, v in loaded.model.reference_outputs(feats).items()}


def keras_encode(loaded, ids, mask):
    """The Keras model's encode_ids output (embeddings or token states) on padded ids."""
    return {k: v.numpy() for k, v in loaded.model.encode_reference(ids, mask).items()}


def max_diff(got, want, keys=None, mask=None):
    keys = keys or sorted(want)
    worst = 0.0
    for k in keys:
        g, w = np.asarray(got[k], np.float64), np.asarray(want[k], np.float64)
        if g.shape != w.shape:
            return float("inf")
        d = np.abs(g - w)
        if mask is not None and d.ndim == 3:
            d = d * mask[..., None]
        worst = max(worst, float(d.max()) if d.size else 0.0)
    return worst


class Batches:
    """The parity set, cut in batches, with Python features and Keras reference outputs."""

    def __init__(self, loaded, a, b, labels, max_len, batch_size=32):
        self.loaded, self.a, self.b, self.max_len = loaded, a, b, max_len
        self.labels = labels
        self.batches = []
        for i in range(0, len(a), batch_size):
            ba, bb = a[i:i + batch_size], b[i:i + batch_size]
            feats, rows = python_features(loaded, ba, bb, max_len)
            self.batches.append({"a": ba, "b": bb, "feats": feats, "rows": rows,
                                 "ref": keras_outputs(loaded, feats)})

    def encoded(self, bt, side):
        """Keras encode() of one side ("x" or "y") of a batch, computed once."""
        key = f"enc_{side}"
        if key not in bt:
            f = bt["feats"]
            bt[key] = keras_encode(self.loaded, f[f"{side}_ids"], f[f"{side}_mask"])
        return bt[key]

    def reference(self, key):
        return np.concatenate([bt["ref"][key] for bt in self.batches])


def _check(diff, tol, **extra):
    return {"max_abs_diff": diff, "tolerance": tol, "ok": bool(diff <= tol), **extra}


def _labels_of(out, kind_outputs, threshold):
    if "probs" in kind_outputs:
        return np.argmax(out["probs"], axis=-1)
    return (np.asarray(out["cosine"]) > threshold).astype(int)


def run_checks(loaded, data, artifacts, ids_outputs, int8_rule=None, cosine_threshold=None):
    """Compare every artifact with Keras. `artifacts`: dict with optional keys
    `saved_model` (version or staging dir), `frozen` (dir), `onnx` (dict name -> path:
    `predict_ids`, `encode_ids`, `score`, `int8`, `opt-<level>`, `fused`, `fused.encode_ids`,
    `fused.int8`). `int8_rule`: keyword
    arguments of `int8_verdict`. Returns the report dict."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401

    cls = loaded.kind_class
    checks, tokenization = {}, None
    outs = list(ids_outputs)

    def over_batches(fn):
        """max over batches of max_diff(fn(batch), batch ref)."""
        return max(max_diff(fn(bt), bt["ref"], outs) for bt in data.batches)

    if artifacts.get("saved_model"):
        sm = tf.saved_model.load(str(artifacts["saved_model"]))
        sigs = sm.signatures
        tol = TOLERANCES["saved_model"]

        def serving(bt):
            r = sigs["serving_default"](text_a=tf.constant(bt["a"]), text_b=tf.constant(bt["b"]))
            return {k: v.numpy() for k, v in r.items()}

        checks["saved_model.serving_default"] = _check(over_batches(serving), tol)
        checks["saved_model.predict_ids"] = _check(over_batches(
            lambda bt: {k: v.numpy() for k, v in sigs["predict_ids"](
                **{n: tf.constant(x) for n, x in bt["feats"].items()}).items()}), tol)
        tokenization = _token_parity(sigs["tokenize"], data, cls.joint_pair())
        key = cls.encode_output
        if key:
            worst = 0.0
            for bt in data.batches:
                r = sigs["encode"](texts=tf.constant(bt["a"]))
                want = data.encoded(bt, "x")
                got = {key: r[key].numpy()}
                worst = max(worst, max_diff(got, want, [key], bt["feats"]["x_mask"]))
                if cls.late_interaction and not np.array_equal(r["mask"].numpy(), bt["feats"]["x_mask"]):
                    worst = float("inf")
            checks["saved_model.encode"] = _check(worst, tol)
        if cls.late_interaction:
            def score(bt):
                f = bt["feats"]
                hx, hy = data.encoded(bt, "x")["token_states"], data.encoded(bt, "y")["token_states"]
                r = sigs["score"](x_states=tf.constant(hx), x_mask=tf.constant(f["x_mask"]),
                                  y_states=tf.constant(hy), y_mask=tf.constant(f["y_mask"]))
                return {"probs": r["probs"].numpy()}
            checks["saved_model.score"] = _check(over_batches(score), tol)

    if artifacts.get("frozen"):
        from export.frozen import load_frozen

        fn = load_frozen(artifacts["frozen"])
        checks["frozen.predict_ids"] = _check(over_batches(
            lambda bt: {k: v.numpy() for k, v in fn(**bt["feats"]).items()}), TOLERANCES["frozen"])

    onnx_files = artifacts.get("onnx") or {}
    if onnx_files:
        from runtime.onnx import session

        def onnx_runner(path):
            sess = session(path)
            names = [o.name for o in sess.get_outputs()]
            return lambda feed: dict(zip(names, sess.run(None, feed)))

        _graph_checks("onnx", onnx_files, onnx_runner, onnx_runner, data, outs, TOLERANCES["onnx"], int8_rule,
                      cosine_threshold, checks)
    ov_files = artifacts.get("openvino") or {}
    if ov_files:
        from runtime.openvino import Runner, precision

        runtime_precision = precision("auto")  # what the server will run: int8 and bf16 are judged at it
        _graph_checks("openvino", ov_files, lambda path: Runner(path, None, "f32"),
                      lambda path: Runner(path, None, runtime_precision), data, outs, TOLERANCES["openvino"], int8_rule,
                      cosine_threshold, checks)
        if runtime_precision == "bf16" and "predict_ids" in ov_files:  # bf16 moves outputs: judged like int8,
            rule = {**(int8_rule or {}), "max_accuracy_drop": BF16_MAX_ACCURACY_DROP}  # to the lossless limit
            checks["openvino.predict_ids.bf16"] = _int8_check(Runner(ov_files["predict_ids"], None, "bf16"), data, outs,
                                                              rule, cosine_threshold, Path(ov_files["predict_ids"]).name)

    ok = all(c["ok"] for c in checks.values())
    return {"ok": ok, "checks": checks, "tokenization": tokenization,
            "failed": [k for k, c in checks.items() if not c["ok"]]}


def _graph_checks(prefix, files, exact_runner, int8_runner, data, outs, tol, int8_rule, threshold, checks):
    """Checks of one runtime's graph files (label -> path; labels as in `run_checks`), added to `checks` as
    `<prefix>.<label>`. `exact_runner(path)` / `int8_runner(path)`: a callable, input dict -> output dict,
    for the tolerance checks / the int8 gate."""
    cls = data.loaded.kind_class
    key = cls.encode_output
    for label, path in files.items():
        file, run = Path(path).name, None
        if label.endswith("int8"):  # int8 of the fp32 graph (onnx: model.onnx / model.fused.onnx): the same gate
            checks[f"{prefix}.{label}"] = _int8_check(int8_runner(path), data, outs, int8_rule or {}, threshold, file)
            continue
        run = exact_runner(path)
        if label.endswith("encode_ids"):
            worst = 0.0
            for bt in data.batches:
                f = bt["feats"]
                got = run({"input_ids": f["x_ids"], "attention_mask": f["x_mask"]})
                worst = max(worst, max_diff(got, data.encoded(bt, "x"), [key], f["x_mask"]))
        elif label == "score":
            def score(bt):
                f = bt["feats"]
                hx, hy = data.encoded(bt, "x")["token_states"], data.encoded(bt, "y")["token_states"]
                return run({"x_states": hx, "x_mask": f["x_mask"], "y_states": hy, "y_mask": f["y_mask"]})
            worst = max(max_diff(score(bt), bt["ref"], outs) for bt in data.batches)
        else:
            worst = max(max_diff(run(bt["feats"]), bt["ref"], outs) for bt in data.batches)
        checks[f"{prefix}.{label}"] = _check(worst, tol, file=file)


# bf16 execution is the default where the CPU has it: it must be lossless, so a labelled set withholds it
# (the IR then runs in f32) when the pairs show a drop above 0.1 point, not int8's 1 point.
BF16_MAX_ACCURACY_DROP = 0.1
INT8_MIN_CONFIDENT = 10  # fewer confident pairs (when the set has more) cannot judge int8


def fp32_margin(ref, outs, threshold):
    """Distance of each pair from the decision boundary: top-1 minus top-2 probability,
    or |cosine - threshold| for sbert without a classifier."""
    if "probs" in outs:
        top = np.sort(np.asarray(ref["probs"], np.float64), axis=-1)
        return top[:, -1] - top[:, -2]
    return np.abs(np.asarray(ref["cosine"], np.float64) - threshold)


def int8_verdict(pred_keras, pred_int8, margin, targets=None, min_agreement=0.95, min_margin=0.1,
                 max_accuracy_drop=1.0):
    """The int8 gate on predicted labels. With `targets` (class indices of a labelled set):
    `accuracy_verdict` (int8 is withheld only when the pairs show its accuracy drop exceeds
    `max_accuracy_drop` points); agreement is only reported. Without: the label agreement over the
    pairs whose fp32 `margin` >= `min_margin` must be >= `min_agreement`, on at least
    INT8_MIN_CONFIDENT such pairs (or all, in a smaller set); `min_agreement` 0 turns the gate off."""
    same = np.asarray(pred_int8) == np.asarray(pred_keras)
    confident = np.asarray(margin) >= min_margin
    n, n_conf = len(same), int(confident.sum())
    agree_conf = float(same[confident].mean()) if n_conf else None
    res = {"pairs": n, "label_agreement": float(same.mean()) if n else 1.0, "flipped": int(n - same.sum()),
           "min_margin": min_margin, "confident_pairs": n_conf, "confident_agreement": agree_conf,
           "flipped_confident": int(n_conf - same[confident].sum()), "min_agreement": min_agreement}
    if targets is not None:
        res.update(accuracy_verdict(pred_keras, pred_int8, targets, max_accuracy_drop))
        return res
    need = min(INT8_MIN_CONFIDENT, n)
    res["gate"] = "agreement"
    if min_agreement == 0:
        ok = True
    elif n_conf < need:
        ok, reason = False, (f"only {n_conf} of {n} pairs have an fp32 margin >= {min_margin:g} (need {need}): "
                             "too few to judge int8; set data.test to a labelled file")
    else:
        ok = agree_conf >= min_agreement
        reason = (f"label agreement {agree_conf:.4f} < {min_agreement:g} on the {n_conf} of {n} pairs "
                  f"with fp32 margin >= {min_margin:g}")
    res["ok"] = bool(ok)
    if not ok:
        res["reason"] = reason
    return res


def accuracy_verdict(pred_keras, pred_int8, targets, max_accuracy_drop):
    """The int8 gate on a labelled set: is int8 less accurate than fp32 by more than
    `max_accuracy_drop` points? Decided on the pairs exactly one of them gets right (a paired test:
    the pairs both get right or wrong say nothing about the difference), by the one-sided
    CONFIDENCE lower bound on the drop (`training.metrics.drop_lower_bound`): above the limit,
    withheld; the observed drop above the limit but its bound not, "not distinguishable" on this
    many pairs: published, with a warning saying so and how many pairs would decide it."""
    y = np.asarray(targets)
    right_k, right_q = np.asarray(pred_keras) == y, np.asarray(pred_int8) == y
    n = len(y)
    fp32_only, int8_only = int(np.sum(right_k & ~right_q)), int(np.sum(~right_k & right_q))
    drop = 100.0 * (fp32_only - int8_only) / n
    bound = 100.0 * drop_lower_bound(fp32_only, int8_only, n)
    hits_k, hits_q = int(right_k.sum()), int(right_q.sum())
    acc_k, acc_q = hits_k / n, hits_q / n
    if bound > max_accuracy_drop:
        decision = "worse than the limit"
    elif drop > max_accuracy_drop + 1e-9:  # 1e-9: an exact 1-point drop is not over a 1-point limit by rounding
        decision = "not distinguishable"
    else:
        decision = "within the limit"
    res = {"gate": "accuracy", "accuracy_keras": acc_k, "accuracy_int8": acc_q, "accuracy_diff": (hits_q - hits_k) / n,
           "max_accuracy_drop": max_accuracy_drop, "fp32_only": fp32_only, "int8_only": int8_only,
           "drop_lower_bound": bound, "confidence": CONFIDENCE, "decision": decision,
           "ok": decision != "worse than the limit"}
    measured = (f"accuracy {acc_k:.4f} -> {acc_q:.4f} ({-drop:+.2f} points, limit -{max_accuracy_drop:g}) on {n} "
                f"labelled pairs, {fp32_only} right in fp32 only and {int8_only} in int8 only")
    bound_text = (f"the drop's one-sided {CONFIDENCE:.0%} lower bound (exact binomial on those "
                  f"{fp32_only + int8_only} pairs) is {bound:.2f} points")
    if decision == "worse than the limit":
        res["reason"] = (f"{measured}: {bound_text}, above the limit; export.int8_max_accuracy_drop >= "
                         f"{math.ceil(bound * 100) / 100:g} would publish it")
    elif decision == "not distinguishable":
        more = pairs_to_decide(fp32_only, int8_only, n, max_accuracy_drop / 100)
        res["pairs_to_decide"] = more
        res["warning"] = (f"{measured}: not distinguishable from a drop within the limit, {bound_text}; "
                          "published. " + (f"About {more} labelled pairs at the same rates of disagreement would "
                                           "withhold it" if more else "No labelled file of a practical size "
                                           "at these rates would withhold it"))
    return res


def _targets(data, outs):
    """Class index of each pair of a labelled set (cosine only: 1 = "same meaning", as the
    sbert run chose its threshold), or None."""
    names = [str(n) for n in (data.loaded.labels or [])]
    if data.labels is None or not names:
        return None
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[str(v)] for v in data.labels])
    if "probs" in outs:
        return y
    from training.metrics import same_meaning

    return same_meaning(y, names).astype(int)


def _int8_check(run, data, outs, rule, threshold, file):
    threshold = 0.5 if threshold is None else float(threshold)
    got = {k: [] for k in outs}
    for bt in data.batches:
        r = run(bt["feats"])
        for k in outs:
            got[k].append(r[k])
    got = {k: np.concatenate(v) for k, v in got.items()}
    ref = {k: data.reference(k) for k in outs}
    res = int8_verdict(_labels_of(ref, outs, threshold), _labels_of(got, outs, threshold),
                       fp32_margin(ref, outs, threshold), _targets(data, outs), **rule)
    res.update(max_abs_diff=max_diff(got, ref, outs), file=file)
    if "probs" not in outs:
        res["cosine_threshold"] = threshold
    return res


def _token_parity(tokenize, data, joint_pair):
    """In-graph token ids vs PairTokenizer's, pair by pair (`joint_pair`: the signature
    tokenises a pair into one row, else one text)."""
    import tensorflow as tf

    differ, examples, total = 0, [], 0
    for bt in data.batches:
        if joint_pair:
            r = tokenize(text_a=tf.constant(bt["a"]), text_b=tf.constant(bt["b"]))
            got = _unpad(r["input_ids"].numpy(), r["attention_mask"].numpy())
            want = bt["rows"]["input_ids"]
            types = _unpad(r["token_type_ids"].numpy(), r["attention_mask"].numpy())
            same = [g == w and t == wt for g, w, t, wt in zip(got, want, types, bt["rows"]["token_type_ids"])]
        else:
            rx, ry = tokenize(texts=tf.constant(bt["a"])), tokenize(texts=tf.constant(bt["b"]))
            gx = _unpad(rx["input_ids"].numpy(), rx["attention_mask"].numpy())
            gy = _unpad(ry["input_ids"].numpy(), ry["attention_mask"].numpy())
            same = [x == wx and y == wy for x, wx, y, wy in zip(gx, bt["rows"]["x"], gy, bt["rows"]["y"])]
        total += len(same)
        for i, s in enumerate(same):
            if not s:
                differ += 1
                if len(examples) < 5:
                    examples.append({"text_a": bt["a"][i], "text_b": bt["b"][i]})
    return {"pairs": total, "differ": differ, "examples": examples}


def _unpad(ids, mask):
    return [list(map(int, r[:int(m.sum())])) for r, m in zip(ids, mask)]
