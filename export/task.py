"""The export task: `python run_tasks.py --task export --set export.model=<model dir> --out DIR`.

Writes (docs/export.md; what is published when a check fails: its "What is published")::

    <out>/vocab.txt, <out>/model.json            copies: the export directory is self-contained
    <out>/serving.json                           the kind's serving facts as plain data (modeling/serving_spec.py):
                                                 a server of the ONNX files imports neither TensorFlow nor Keras
    <out>/README.md                              the model card (training/card.py), with the export's status
    <out>/saved_model/<name>/<version>/          SavedModel for TF Serving (export/saved_model.py)
    <out>/saved_model/models.config              model_config_list for --model_config_file
    <out>/onnx/model.fused.onnx, encode.fused.onnx
                                                 onnxruntime-fused graphs (export.fuse; export/fusion.py)
    <out>/onnx/model.fused.int8.onnx             int8 copy of the published predict_ids graph (export/onnx.py)
    <out>/onnx/score.onnx (virt)
    <out>/onnx/model.onnx, encode.onnx, model.int8.onnx
                                                 the portable graphs (export/onnx.py), always converted and
                                                 checked (fusion starts from them); published instead of the
                                                 fused ones when there are none, beside them with
                                                 export.portable_onnx: one fp32 ONNX copy of the weights
    <out>/onnx/model.opt-<level>.onnx            with export.ort_optimization
    <out>/openvino/model.xml, model.int8.xml, encode.xml, score.xml (+ .bin)
                                                 OpenVINO IR (fp16 weights) and its NNCF int8 (export/openvino.py)
    <out>/triton/, <out>/ovms/                   the published ONNX / IR files as Triton's / OVMS's model
                                                 repositories (export.formats; export/repository.py)
    <out>/frozen/model.pb, <out>/frozen/io.json  frozen ids signature (export.formats frozen; export/frozen.py)
    <out>/hf/                                    Hugging Face folder (export.formats hf; export/hf.py)
    <out>/parity.json                            every artifact vs Keras (export/parity.py)

Everything is built in staging directories and published only after the parity checks.
A failed fp32 check (SavedModel, frozen, ONNX) raises `ExportError`, publishes nothing (no
new SavedModel version appears for a server to pick up) and leaves the artifacts and the
report in `<out>/failed/`. A failed int8 check withholds only `model.int8.onnx` (kept in
`<out>/withheld/`, unless export.int8_force): the int8 copy is an optional speed variant,
and a good fp32 model must not be lost because quantisation moved a few labels. The fused
graphs are speed variants too: a failed check withholds only the failed file (a failed
`model.fused.onnx` takes its int8 copy with it). The run
then succeeds with a `warning:` line, and parity.json's `status` says what was withheld. The OpenVINO
IR is optional too: a failed fp32 IR check withholds the IR files alone, a failed `openvino.int8` the
int8 IR. parity.json's `timings` (each published predict_ids artifact, timed as the runtime runs it)
are what `serve.backend=auto` picks by.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

from common.files import fresh_dir, replace_dir, write_json
from export import ExportError
from runtime.onnx import FUSED_NAMES, ONNX_FILES
from runtime.progress import Steps
from export.repository import ENGINES, write_repositories
from export.saved_model import publish_version, stage_saved_model, write_models_config
from modeling.serving_spec import spec_of, write_spec
from runtime.backends import NAME_RE, default_name, servable_kinds, time_candidates
from training.card import write_card

log = logging.getLogger(__name__)


def load_for_export(model_dir):
    """A model directory of an exportable kind, with clear errors for everything else."""
    from modeling.model_dir import kind_class, load_model_dir, read_meta

    if model_dir is None:
        raise ExportError("set export.model to a trained model directory, e.g. "
                          "--set export.model=runs/finetune/<stamp>/model")
    path = Path(model_dir)
    if not path.is_dir():
        raise ExportError(f"{path}: no such model directory")
    meta = read_meta(path)  # "not a model directory" / unknown kind
    if not kind_class(meta).servable:
        raise ExportError(f"{path}: a {meta['kind']} model cannot be exported "
                          f"(export supports {', '.join(servable_kinds())})")
    vocab = path / meta.get("tokenizer", {}).get("vocab", "vocab.txt")
    if not vocab.is_file():
        raise ExportError(f"{path}: {vocab.name} is missing; the export needs the model's vocabulary")
    return load_model_dir(path)


FORMATS = ("saved_model", "frozen", "onnx", "openvino", "hf")
FORMATS += ENGINES  # model repositories of the published ONNX / IR files (export/repository.py)


def export_task(cfg):
    """Run the export described by `cfg.export` (and `cfg.out`); returns the parity report."""
    e = cfg.export
    check_options(e)
    return export_loaded(load_for_export(e.model), cfg)


def check_options(e):
    """What config/schema.py cannot declare (the numeric ranges are there: opset, int8_*, parity_*)."""
    if e.name is not None and not NAME_RE.match(e.name):
        raise ExportError(f"export.name={e.name!r}: use letters, digits, '_', '-', '.', starting with a letter")
    unknown = [f for f in e.formats if f not in FORMATS]
    if unknown or "saved_model" not in e.formats:
        raise ExportError(f"export.formats={e.formats}: a list of {', '.join(FORMATS)} that includes saved_model")
    engines = [f for f in e.formats if f in ENGINES]
    if engines and "onnx" not in e.formats:
        raise ExportError(f"export.formats={e.formats}: {', '.join(engines)} lay out the ONNX files: add onnx")
    if "openvino" in e.formats and "onnx" not in e.formats:
        raise ExportError(f"export.formats={e.formats}: openvino is converted from the ONNX graphs: include onnx")
    if e.int8_calibration_data and not Path(e.int8_calibration_data).is_file():
        raise ExportError(f"export.int8_calibration_data={e.int8_calibration_data}: no such file")


def export_loaded(loaded, cfg):
    """Export an already loaded model directory (`load_for_export`) as `cfg.export` says."""
    from export import hf as hf_export
    from export import onnx as onnx_export
    from export import openvino as ov_export
    from export.frozen import freeze
    from export.parity import TOLERANCES, Batches, parity_pairs, run_checks

    e = cfg.export
    check_options(e)
    kind = loaded.kind
    max_len = e.max_seq_len or loaded.max_seq_len
    max_pos = loaded.model.encoder.max_position
    if not 5 <= max_len <= max_pos:  # >= 5: [CLS] a [SEP] b [SEP], as train.max_seq_len
        raise ExportError(f"export.max_seq_len={max_len}: must be between 5 and the encoder's "
                          f"{max_pos} positions")
    if "hf" in e.formats:
        hf_export.hf_head(loaded)  # a model with no Hugging Face form is refused before the slow steps
    name = e.name or default_name(loaded.path, kind)
    out = Path(cfg.out) if cfg.out else Path("runs") / "export" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    model_base = out / "saved_model" / name
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    sm_stage = None
    fns = loaded.model.serving_functions()
    steps = Steps(_steps(e, fns), "export")
    try:
        log.info("exporting %s model %s as %r (max_seq_len %d) to %s", kind, loaded.path, name, max_len, out)
        t0 = time.time()
        steps.start("SavedModel")
        sm_stage, version = stage_saved_model(loaded, model_base, max_len, e.tokenizer)
        log.info("SavedModel version %d written (%.1fs)", version, time.time() - t0)
        artifacts = {"saved_model": sm_stage}
        if "frozen" in e.formats:
            t0 = time.time()
            steps.start("frozen graph")
            freeze(fns["predict_ids"], staging / "frozen", extra={"kind": kind, "model": name})
            artifacts["frozen"] = staging / "frozen"
            log.info("frozen graph written (%.1fs)", time.time() - t0)
        if "hf" in e.formats:
            steps.start("Hugging Face folder")
            head = hf_export.write(loaded, staging / "hf", max_len)
            artifacts["hf"] = staging / "hf"
            if head.get("not_written"):
                log.info("hf: not in the folder: %s", head["not_written"])
        onnx_files, fusion = {}, None
        if "onnx" in e.formats:
            t0 = time.time()
            for fn_name, file in ONNX_FILES.items():
                if fn_name in fns:
                    steps.start(f"ONNX {file}")
                    onnx_files[fn_name] = onnx_export.convert_function(fns[fn_name], staging / "onnx" / file,
                                                                      e.opset)
            if e.fuse:
                steps.start("fusion")
                fusion = fuse_graphs(onnx_files, staging / "onnx", loaded.model.encoder)
            if e.int8:
                steps.start("int8 quantisation")
                quantize_graphs(onnx_files, staging / "onnx", e.portable_onnx, fusion)
            if e.ort_optimization:
                steps.start(f"onnxruntime {e.ort_optimization} optimisation")
                onnx_files[f"opt-{e.ort_optimization}"] = onnx_export.optimize(onnx_files["predict_ids"],
                                                                              e.ort_optimization)
            onnx_files = {k: str(v) for k, v in onnx_files.items()}
            artifacts["onnx"] = onnx_files
            log.info("ONNX written: %s (%.1fs)", ", ".join(Path(p).name for p in onnx_files.values()),
                     time.time() - t0)
        a, b, labels, source = parity_pairs(cfg, loaded, e.parity_samples)
        ov_files, ov_info = {}, None
        if "openvino" in e.formats:
            steps.start("OpenVINO IR")
            ov_files, ov_info = ov_export.write_ir(loaded, e, onnx_files, staging / "openvino", (a, b), max_len)
            if ov_files:
                artifacts["openvino"] = ov_files

        t0 = time.time()
        steps.start("parity: Keras reference")
        data = Batches(loaded, a, b, labels, max_len, batch_size=e.parity_batch_size)
        steps.start("parity checks")
        rule = {"min_agreement": e.int8_min_agreement, "min_margin": e.int8_min_margin,
                "max_accuracy_drop": e.int8_max_accuracy_drop}
        outputs = loaded.model.predict_outputs(loaded.model.get_config())
        result = run_checks(loaded, data, artifacts, outputs, int8_rule=rule, cosine_threshold=loaded.threshold)
        if "hf" in artifacts:  # checked by export/hf.py (which uses parity's helpers), an fp32 check like the others
            hf_check = result["checks"]["hf"] = hf_export.check(artifacts["hf"], loaded, data, TOLERANCES["hf"])
            if not hf_check["ok"]:
                result["ok"], result["failed"] = False, [*result["failed"], "hf"]
        steps.close()
        log.info("parity checks on %d pairs (%.1fs)", len(a), time.time() - t0)
        report = {"ok": result["ok"], "failed": result["failed"], "model": str(loaded.path), "kind": kind,
                  "name": name, "version": version, "max_seq_len": max_len, "tokenizer": e.tokenizer,
                  "opset": e.opset, "pairs": len(a), "pairs_source": source,
                  "checks": result["checks"], "tokenization": result["tokenization"]}
        if fusion is not None:
            report["fusion"] = fusion
        if ov_info is not None:
            report["openvino"] = ov_info
        graphs = {**{f"onnx.{k}": v for k, v in onnx_files.items()}, **{f"openvino.{k}": v for k, v in ov_files.items()}}
        names = ["saved_model", *(k for k in ("frozen", "hf") if k in artifacts), *graphs]
        if any(k not in OPTIONAL + OPENVINO_OPTIONAL for k in result["failed"]):  # an fp32 artifact is wrong: publish nothing
            report["status"] = dict.fromkeys(names, "withheld")
            failed_dir = out / "failed"
            fresh_dir(failed_dir)
            for sub in ("frozen", "onnx", "openvino", "hf"):
                if (staging / sub).exists():
                    os.rename(staging / sub, failed_dir / sub)
            (failed_dir / "saved_model").mkdir()
            os.rename(sm_stage, failed_dir / "saved_model" / str(version))
            sm_stage = None
            write_json(failed_dir / "parity.json", report)
            worst = "; ".join(_describe(k, result["checks"][k]) for k in result["failed"])
            raise ExportError(f"parity check failed, nothing published: {worst} "
                              f"(report and artifacts in {failed_dir})")
        if e.int8 and not result["checks"].get("onnx.fused", {"ok": True})["ok"] and "int8" not in onnx_files:
            _int8_of_portable(onnx_files, staging / "onnx", fusion, result, data, outputs, rule, loaded)
            names.append("onnx.int8")

        # ---- publish: the SavedModel version, then the other artifacts, then the report.
        # Only optional variants (int8, fused) can have failed here: each failed one is withheld
        # (int8 unless forced), the rest is published.
        report["status"] = dict.fromkeys(names, "published")
        report["warnings"] = []
        graphs = {**{f"onnx.{k}": v for k, v in onnx_files.items()}, **{f"openvino.{k}": v for k, v in ov_files.items()}}
        withhold = _optional_verdicts(result["checks"], graphs, e.int8_force, report, out / "withheld")
        for label in unpublished_portable(onnx_files, withhold, e.portable_onnx):
            report["status"][f"onnx.{label}"] = "checked, not published"
            Path(onnx_files.pop(label)).unlink()
            graphs.pop(f"onnx.{label}")
        final = publish_version(sm_stage, model_base, version)
        sm_stage = None
        write_models_config(out / "saved_model")
        report["artifacts"] = {"saved_model": str(final)}
        if graphs:  # withheld/ goes with the onnx/ and openvino/ beside it: all are replaced together
            shutil.rmtree(out / "withheld", ignore_errors=True)
        if withhold:
            (out / "withheld").mkdir()
            report["withheld"] = {}
            for key in withhold:
                kept = out / "withheld" / Path(graphs[key]).name
                os.rename(graphs[key], kept)
                if kept.suffix == ".xml":  # an IR is two files
                    os.rename(Path(graphs[key]).with_suffix(".bin"), kept.with_suffix(".bin"))
                report["withheld"][key] = str(kept)
                prefix, label = key.split(".", 1)
                (onnx_files if prefix == "onnx" else ov_files).pop(label)
        if "openvino" in e.formats:  # an export without IR files must not leave an older export's beside it
            shutil.rmtree(out / "openvino", ignore_errors=True)
        for sub in ("frozen", "onnx", "openvino", "hf"):
            if (staging / sub).exists() and any((staging / sub).iterdir()):
                replace_dir(staging / sub, out / sub)
        if "frozen" in artifacts:
            report["artifacts"]["frozen"] = str(out / "frozen" / "model.pb")
        if "hf" in artifacts:
            report["artifacts"]["hf"] = str(out / "hf")
        if onnx_files:
            report["artifacts"]["onnx"] = {k: str(out / "onnx" / Path(v).name) for k, v in onnx_files.items()}
            engines = [f for f in e.formats if f in ENGINES]
            report["artifacts"].update(write_repositories(out, engines, name, version, fns) if engines else {})
        if ov_files:
            report["artifacts"]["openvino"] = {k: str(out / "openvino" / Path(v).name) for k, v in ov_files.items()}
        if onnx_files or ov_files:  # what `auto` picks from (runtime/backends.py), timed as the server runs them
            t0 = time.time()
            spec = spec_of(loaded.kind_class, loaded.meta["model"]["config"])
            report["timings"] = time_candidates(out, spec, [bt["feats"] for bt in data.batches[:TIMED_BATCHES]],
                                                report["status"])
            log.info("timed predict_ids (ms per batch of %d pairs): %s (%.1fs)", e.parity_batch_size,
                     ", ".join(f"{k} {v['ms_per_batch']:.1f}" for k, v in report["timings"].items()),
                     time.time() - t0)
        for file in ("vocab.txt", "model.json"):
            shutil.copyfile(Path(loaded.path) / file, out / file)
        write_spec(spec_of(loaded.kind_class, loaded.meta["model"]["config"]), out)  # read by a TF-free server
        write_json(out / "parity.json", report)
        write_card(out, loaded.path, export=report)
        shutil.rmtree(out / "failed", ignore_errors=True)
    finally:
        steps.close()
        shutil.rmtree(staging, ignore_errors=True)
        if sm_stage is not None:
            shutil.rmtree(sm_stage, ignore_errors=True)
    _print_summary(out, report)
    return report


def _steps(e, fns):
    """How many steps the export of `fns` as `e` says takes (the progress bar's total)."""
    onnx = "onnx" in e.formats
    return (1 + ("frozen" in e.formats) + ("hf" in e.formats) + 2 + onnx * (sum(fn in fns for fn in ONNX_FILES) + bool(e.int8)
                                                      + bool(e.fuse) + bool(e.ort_optimization)
                                                      + ("openvino" in e.formats)))


TIMED_BATCHES = 4  # parity batches each published predict_ids artifact is timed on (parity.json `timings`)

# Speed variants of model.onnx / encode.onnx: a failed check withholds the file alone (docs/export.md).
OPTIONAL = ("onnx.int8", "onnx.fused", "onnx.fused.int8", "onnx.fused.encode_ids")
# The OpenVINO IR: a failed check withholds the openvino/ files alone (the ONNX files stand), bf16 execution
# failing its check makes the runtime run the IR in f32.
OPENVINO_FP32 = ("openvino.predict_ids", "openvino.encode_ids", "openvino.score")
OPENVINO_OPTIONAL = (*OPENVINO_FP32, "openvino.int8", "openvino.predict_ids.bf16")
FUSED_FILES = {"predict_ids": ("fused", FUSED_NAMES["model.onnx"]), "encode_ids": ("fused.encode_ids", FUSED_NAMES["encode.onnx"])}


def fuse_graphs(onnx_files, onnx_dir, encoder):
    """Fused copies of model.onnx / encode.onnx (export/fusion.py).

    Adds the files to `onnx_files` (labels `fused`, `fused.encode_ids`) and returns
    what happened per function for parity.json: the optimiser's op counts, or why there is no
    fused file (the optimiser failed, or found nothing to fuse: then the graph is the unfused one
    and is not written). Never raises for a graph it cannot fuse: the unfused files stand."""
    from export import ExportError as _ExportError
    from export import fusion as fusion_mod

    report = {}
    for fn, (label, file) in FUSED_FILES.items():
        if fn not in onnx_files:
            continue
        t0 = time.time()
        try:
            info = fusion_mod.fuse(onnx_files[fn], onnx_dir / file, encoder.num_heads, encoder.hidden_size)
        except _ExportError as err:
            report[fn] = {"fused": False, "reason": str(err)}
            log.warning("%s not fused: %s", file, err)
            continue
        if not info["fused_ops"]:
            (onnx_dir / file).unlink(missing_ok=True)
            report[fn] = {"fused": False, **info,
                          "reason": "onnxruntime's transformer optimiser found no subgraph to fuse"}
            log.warning("%s not written: the optimiser found nothing to fuse", file)
            continue
        onnx_files[label] = onnx_dir / file
        report[fn] = {"fused": True, "file": file, **info, "seconds": round(time.time() - t0, 2)}
        log.info("%s: %s", file, ", ".join(f"{n} {op}" for op, n in info["fused_ops"].items()))
    return report


def quantize_graphs(onnx_files, onnx_dir, portable, fusion=None):
    """The int8 copy of the graph that is published: model.fused.int8.onnx of model.fused.onnx when
    there is one, else model.int8.onnx of model.onnx; model.int8.onnx too with `portable`
    (export.portable_onnx publishes the portable graphs). A fused graph quantize_dynamic fails on
    falls back to model.int8.onnx, the failure noted in `fusion` (the report's "fusion")."""
    from export.onnx import quantize_int8

    if "fused" in onnx_files:
        try:
            onnx_files["fused.int8"] = quantize_int8(onnx_files["fused"], onnx_dir / "model.fused.int8.onnx")
        except Exception as err:  # quantize_dynamic raises RuntimeError/KeyError/...; model.int8.onnx instead
            (onnx_dir / "model.fused.int8.onnx").unlink(missing_ok=True)
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            fusion["predict_ids"]["int8"] = f"not written: quantize_dynamic failed on the fused graph: {first}"
            log.warning("model.fused.int8.onnx not written (model.int8.onnx instead): %s", first)
    if portable or "fused.int8" not in onnx_files:
        onnx_files["int8"] = quantize_int8(onnx_files["predict_ids"], onnx_dir / "model.int8.onnx")


def _int8_of_portable(onnx_files, onnx_dir, fusion, result, data, outputs, rule, loaded):
    """The fused graph failed its check, so model.onnx is the one published: quantise it (its int8
    copy was not made, export.portable_onnx being off) and check it, into `result`."""
    from export.onnx import quantize_int8
    from export.parity import run_checks

    try:
        onnx_files["int8"] = str(quantize_int8(onnx_files["predict_ids"], onnx_dir / "model.int8.onnx"))
    except Exception as err:  # as in quantize_graphs: the fp32 files stand
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        fusion["predict_ids"]["int8"] = f"model.int8.onnx not written: quantize_dynamic failed: {first}"
        log.warning("model.int8.onnx not written: %s", first)
        return
    checked = run_checks(loaded, data, {"onnx": {"int8": onnx_files["int8"]}}, outputs, int8_rule=rule,
                         cosine_threshold=loaded.threshold)
    result["checks"].update(checked["checks"])
    result["failed"] += checked["failed"]


# The portable graph of each fused one: published with it only when export.portable_onnx is set.
PORTABLE = {"predict_ids": "fused", "encode_ids": "fused.encode_ids"}


def unpublished_portable(onnx_files, withhold, portable):
    """Labels of the portable graphs not to publish (`withhold`: the keys withheld, `onnx.fused`, ...):
    those whose fused graph is published, unless
    `portable`. Without a published fused graph the portable one is the deployment graph."""
    if portable:
        return []
    return [p for p, f in PORTABLE.items() if p in onnx_files and f in onnx_files and f"onnx.{f}" not in withhold]


def _optional_verdicts(checks, graphs, int8_force, report, withheld_dir):
    """Status and warning of each optional variant; returns the keys (`onnx.int8`, ...) to withhold.

    `graphs`: key -> staged file. A fused int8 graph is withheld with its fused fp32 graph: it is a
    quantised copy of it; the OpenVINO IR files go together when an fp32 one fails (the int8 IR is
    quantised from the same graph). bf16 execution failing its check withholds nothing: the runtime
    then runs the IR in f32 (runtime/backends.py reads the status)."""
    withhold = []
    ov_fp32 = [k for k in OPENVINO_FP32 if k in graphs and not checks.get(k, {"ok": True})["ok"]]
    for key in (*OPTIONAL, *OPENVINO_FP32, "openvino.int8"):
        if key not in graphs:
            continue
        check = checks.get(key, {"ok": True})
        reason = check.get("reason") or (f"max|diff| {check['max_abs_diff']:.3g} > {check['tolerance']:g}"
                                         if "tolerance" in check else None)
        derived = (key == "onnx.fused.int8" and "onnx.fused" in withhold) or (key.startswith("openvino.") and
                                                                             ov_fp32 and key not in ov_fp32)
        if derived:  # a copy of a wrong graph: never published, not even forced
            check, reason = {"ok": False}, ("its fused fp32 graph (onnx.fused) failed its check" if key.startswith("onnx")
                                            else f"its fp32 IR ({ov_fp32[0]}) failed its check")
        if check["ok"]:
            if check.get("warning"):  # published, with what could not be told (int8 on a small labelled file)
                report["warnings"].append(f"{key} published: {check['warning']}")
            continue
        kept = withheld_dir / Path(graphs[key]).name
        if key.endswith("int8") and int8_force and not derived:
            report["status"][key] = "forced"
            report["warnings"].append(f"{key} published although its check failed (export.int8_force=true): {reason}")
            continue
        report["status"][key] = "withheld"
        withhold.append(key)
        how = ("export.int8_force=true publishes it" if check.get("gate") == "accuracy" and key.endswith("int8")
               else "export.int8_force=true publishes it; a labelled data.test judges it by accuracy"
               if key.endswith("int8") else "export.fuse=false skips the fused graphs" if key.startswith("onnx")
               else "export.formats without openvino skips it")
        what = "the int8 file" if key in ("onnx.int8", "openvino.int8") else "the file"
        first = ("fp32 artifacts published" if key in ("onnx.int8", "openvino.int8")
                 else "the unfused ONNX files published" if key.startswith("onnx") else "the ONNX files published")
        report["warnings"].append(f"{key} withheld, {first}: {reason}; {what} is in {kept} ({how})")
    bf16 = checks.get("openvino.predict_ids.bf16")
    if bf16 is not None and "openvino.predict_ids" not in withhold:
        report["status"]["openvino.predict_ids.bf16"] = "published" if bf16["ok"] else "refused"
        if not bf16["ok"]:
            report["warnings"].append(f"openvino.predict_ids.bf16 refused, the IR runs in f32: {bf16['reason']}")
        elif bf16.get("warning"):
            report["warnings"].append(f"openvino.predict_ids.bf16 published: {bf16['warning']}")
    return withhold


def _describe(key, check):
    if "reason" in check:
        return f"{key} {check['reason']}"
    return f"{key} max|diff| {check['max_abs_diff']:.3g} > {check['tolerance']:g}"


def _print_summary(out, report):
    print(f"exported {report['kind']} model {report['name']!r} version {report['version']} to {out}")
    print(f"  saved_model: {report['artifacts']['saved_model']}")
    for k in ("frozen", "hf"):
        if k in report["artifacts"]:
            print(f"  {k + ':':<12} {report['artifacts'][k]}")
    for k, v in report["artifacts"].get("onnx", {}).items():
        print(f"  onnx {k + ':':<12} {v}")
    for k in ENGINES:
        if k in report["artifacts"]:
            print(f"  {k + ':':<12} {Path(out) / k} ({', '.join(Path(p).name for p in report['artifacts'][k].values())})")
    for k, v in report.get("withheld", {}).items():
        print(f"  withheld {k}: {v}")
    for k, c in report["checks"].items():
        if "label_agreement" in c:
            detail = f"label agreement {c['label_agreement']:.4f}"
            if c["confident_agreement"] is not None:
                detail += f", {c['confident_agreement']:.4f} on {c['confident_pairs']} pairs with margin >= {c['min_margin']:g}"
            if c["gate"] == "accuracy":
                detail += (f", accuracy {c['accuracy_keras']:.4f} -> {c['accuracy_int8']:.4f} on {c['pairs']} pairs "
                           f"({c['fp32_only']} right in fp32 only, {c['int8_only']} in int8 only: {c['decision']})")
            detail += f" [{'ok' if c['ok'] else 'FAILED'}, gate: {c['gate']}]"
        else:
            detail = f"max|diff| {c['max_abs_diff']:.2e} (<= {c['tolerance']:g})"
        print(f"  parity {k:<30} {detail}")
    print(f"parity report: {Path(out) / 'parity.json'}")
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
