"""`--task predict`: score pairs with a model directory (Keras) or an export directory.

Apart from crossenc.task (which imports the training stack) so that predicting with an export
imports neither TensorFlow nor Keras (requirements-serve.txt is enough; tests/test_serve.py runs it so).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import logging
import sys
from pathlib import Path

from common.files import atomic_path
from data import DataError, PairData
from data.readers import read_data
from training.rundir import check_out

log = logging.getLogger(__name__)


def model_path(cfg):
    path = cfg.model.init
    if path is None or path == "minilm":
        raise DataError("set model.init to a trained model directory, e.g. --set model.init=runs/finetune/<stamp>/model")
    return path


def read_unlabelled(cfg, path):
    """Pairs from a file, or tab-separated `a<TAB>b` lines on stdin when path is '-'.

    A bad stdin line (not two fields, not UTF-8) fails with its line number, or is skipped and
    counted with data.on_bad_row=skip, as in files."""
    if path != "-":
        return read_data(cfg, path, labelled=False)
    a, b, lines, skipped = [], [], [], collections.Counter()

    def bad(n, reason, detail):
        if cfg.data.on_bad_row == "error":
            raise DataError(f"<stdin>:{n}: {detail}")
        skipped[reason] += 1

    # Bytes, decoded line by line: sys.stdin's own decoding fails without a line number, or (C locale)
    # passes undecodable bytes on as surrogates that the tokenizer rejects.
    for n, raw in enumerate(getattr(sys.stdin, "buffer", sys.stdin), 1):
        try:
            line = (raw if isinstance(raw, bytes) else raw.encode("utf-8")).decode("utf-8").rstrip("\r\n")
            if n == 1:  # a BOM (Windows tools write one) is no part of text_a, as in files
                line = line.removeprefix("\ufeff")
        except UnicodeError:
            bad(n, "not valid UTF-8", "not valid UTF-8")
            continue
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:  # more: a tab inside a text? Where text_b starts would be a guess
            more = f", found {len(parts)} tab-separated fields" if len(parts) > 2 else ""
            bad(n, "wrong number of fields", f"expected 'text_a<TAB>text_b'{more}")
        elif not parts[0].strip() or not parts[1].strip():
            side = "text_a" if not parts[0].strip() else "text_b"  # was only "expected 'text_a<TAB>text_b'"
            bad(n, "empty text", f"empty {side} (expected 'text_a<TAB>text_b', a text on each side of the tab)")
        else:
            a.append(parts[0]), b.append(parts[1]), lines.append(n)
    if skipped:
        log.warning("<stdin>: skipped %d bad rows (%s)", sum(skipped.values()), dict(skipped))
    if not a:
        raise DataError("<stdin>: no pairs")
    return PairData(a, b, None, lines, path="<stdin>", skipped=sum(skipped.values()), skip_reasons=skipped)


def predict(cfg):
    """Score pairs with a model directory: CSV, or JSON lines when --out ends with .jsonl (default stdout).
    Columns: the class probabilities (`p_<label>`) of a model with a classifier, the `cosine` of a
    bi-encoder; a model without a classifier labels a pair by cosine against its run's threshold.

    model.init may also be an export directory: then the export's graphs run (serve.backend,
    serve.int8, serve.fused, serve.threads choose them, as for the server: by default `auto`, the
    fastest artifact the export timed and checked)."""
    from runtime.backends import is_export_dir, open_model, predict_pairs

    check_out("predict", cfg.out)
    path = model_path(cfg)
    # Written under a temporary name and renamed when complete: a failed run keeps the previous file.
    # Opened first, so that an --out that cannot be written fails before the model is loaded.
    with contextlib.ExitStack() as stack:  # on exit the file is closed first, then renamed (or removed)
        out = stack.enter_context(_open_out(cfg.out, stack.enter_context(atomic_path(cfg.out)))) if cfg.out \
            else sys.stdout
        pairs = read_unlabelled(cfg, cfg.data.test or "-")
        if is_export_dir(path):
            s = cfg.serve
            backend = open_model(path, s.backend, s.int8, s.threads, fused=s.fused)
            log.info("predict with %s", backend.describe())
            outputs = {"probs": predict_pairs(backend, pairs.text_a, pairs.text_b, cfg.train.eval_batch_size,
                                              progress="scoring")}
            labels = backend.labels
        else:  # a model directory: Keras, and the training set of requirements
            from modeling.model_dir import load_model_dir
            from training.trainer import predict_outputs

            loaded = load_model_dir(path)
            if not loaded.has_classifier and loaded.threshold is None:
                raise DataError(f"{loaded.path}: this {loaded.kind} model has no classifier; it labels a pair by "
                                f"cosine against the threshold its run chose on valid ({loaded.path.resolve().parent}"
                                f"/metrics.json, valid.{loaded.kind_class.threshold_metric}), and there is none: "
                                f"give the model directory inside its run")
            feats = loaded.model.featurize(loaded.tokenizer, pairs.text_a, pairs.text_b, loaded.max_seq_len)
            outputs = predict_outputs(loaded.model, feats, cfg.train.eval_batch_size, progress=True)
            labels = loaded.labels
        probs, cosine = outputs.get("probs"), outputs.get("cosine")
        if probs is None:
            from common.labels import positive_index
            from training.metrics import cosine_classes

            classes = cosine_classes(cosine, labels, loaded.threshold)
            names = [labels[c] if c >= 0 else f"not {labels[positive_index(labels)]}" for c in classes]
        else:
            names = [labels[c] for c in probs.argmax(axis=1)]
        jsonl = bool(cfg.out) and str(cfg.out).endswith(".jsonl")
        writer = None if jsonl else csv.writer(out)
        if writer:
            writer.writerow(["text_a", "text_b", "label"] + [f"p_{n}" for n in labels] * (probs is not None)
                            + ["cosine"] * (cosine is not None))
        for i, (a, b, label) in enumerate(zip(pairs.text_a, pairs.text_b, names)):
            p = () if probs is None else probs[i]
            c = () if cosine is None else (float(cosine[i]),)
            if jsonl:
                row = {"text_a": a, "text_b": b, "label": label}
                if probs is not None:
                    row["probs"] = {n: round(float(x), 6) for n, x in zip(labels, p)}
                if c:
                    row["cosine"] = round(c[0], 6)
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                writer.writerow([a, b, label] + [f"{x:.6f}" for x in (*p, *c)])
    return outputs


def _open_out(out, tmp):
    """`tmp` open for writing, or an error naming --out and why it cannot be written."""
    try:
        return open(tmp, "w", encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError(f"--out {out}: the directory {Path(out).parent} does not exist") from None
    except OSError as e:
        raise DataError(f"--out {out}: cannot write in {Path(out).parent} ({e.strerror})") from None
