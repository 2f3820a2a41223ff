#!/usr/bin/env python
"""Entry point: `python run_tasks.py --task TASK [--config FILE] [--set key=value ...] [--out DIR]`.

Without a config file a task reads `config/<task>.yaml`; without data keys the
training tasks use generated sample data and all-MiniLM-L6-v2 (the embedded default).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from runtime.logs import quiet_start_up  # noqa: E402  (TensorFlow's, transformers' and faiss's start-up lines)

# task -> (module, function, default config, one-line help)
TASKS = {
    "finetune": ("crossenc.task", "finetune", "finetune",
                 "fine-tune a cross-encoder ([CLS] a [SEP] b [SEP] -> classifier)"),
    "evaluate": ("crossenc.task", "evaluate", "finetune",
                 "metrics + confusion matrix of a model directory (model.init) on data.test"),
    "predict": ("crossenc.predict", "predict", "finetune",
                "score pairs of data.test (or a<TAB>b lines on stdin) with model.init; --out FILE"),
    "distill": ("distill.task", "train_distill", "distill",
                "distill a cross-encoder teacher (distill.teacher, or fine-tuned first) into a tiny student"),
    "sbert": ("senbert.task", "train_sbert", "sbert",
              "Sentence-BERT bi-encoder (sbert.objective softmax|cosine|mnrl)"),
    "embed": ("senbert.task", "embed", "sbert",
              "texts (data.test or stdin, one per line) -> <out>/embeddings.npy with an sbert model.init"),
    "pretrain": ("pretrain.task", "pretrain", "pretrain",
                 "masked-LM pre-training on in-domain text (data.text), for model.init of other tasks"),
    "virt": ("virt.task", "train_virt", "virt",
             "VIRT: siamese student distilling a cross-encoder's attention + adapted interaction"),
    "virt-plot": ("virt.plot", "plot_task", "virt",
                  "heat maps of teacher / VIRT / siamese x->y attention for one pair (PNG)"),
    "export": ("export.task", "export_task", "export",
               "SavedModel (TF Serving) + frozen .pb + ONNX/int8 ONNX of export.model, parity-checked"),
    "serve": ("serve.task", "serve_task", "serve",
              "HTTP server (TF Serving REST API, micro-batching) for serve.model: an export or model dir"),
    "index": ("search.task", "index_task", "index",
              "encode index.corpus with an sbert/virt index.model into an on-disk index (--out DIR)"),
    "search": ("search.task", "search_task", "search",
               "top-k cosine recall over search.index (+ rerank) for queries on stdin or search.queries"),
}

MAIN_KEYS = """main keys (--set section.key=value; all keys: docs/configuration.md):
  model.init        checkpoint: minilm | HF dir (sentence-transformers, export hf/) | Google TF1 dir | model directory | null (random)
  model.num_layers  keep the first k layers ("tiny" models)
  data.train / data.valid / data.test   pair files; data.format auto|csv|tsv|jsonl|bq|lcqmc|afqmc|mrpc
  data.text_a / data.text_b / data.label  column names
  train.epochs, train.batch_size (per replica), train.learning_rate, train.max_seq_len, train.seed
  train.strategy auto|mirrored|multiworker|one_device, train.cpu_replicas N
"""


def task_inputs(cfg):
    """`[(key, path, check)]`: the files and directories `cfg.task` reads, as `cfg` gives them (checked by
    training.rundir.check_inputs before the task is imported)."""
    from config.schema import TRAINING_TASKS

    t, d, m = cfg.task, cfg.data, cfg.model
    model = [("model.vocab", m.vocab, "vocab")] if m.init is None else [("model.init", m.init, "checkpoint")]
    if t == "pretrain":
        texts = [(f"data.text[{i}]", p, "text") for i, p in enumerate(d.text)]
        return (texts or [("data.train", d.train, "text")]) + model
    if t in TRAINING_TASKS:
        found = [("data.train", d.train, "file"), ("data.valid", d.valid, "file"), ("data.test", d.test, "file")]
        section = {"distill": cfg.distill, "virt": cfg.virt}.get(t)
        if section is not None:
            found += [(f"{t}.teacher", section.teacher, "model_dir"), (f"{t}.baseline", section.baseline, "model_dir")]
        return found + model
    return {
        "evaluate": [("model.init", m.init, "model_dir"),
                     ("data.test", d.test, "file") if d.test else ("data.valid", d.valid, "file")],
        "predict": [("model.init", m.init, "dir"), ("data.test", d.test, "file")],
        "embed": [("model.init", m.init, "model_dir"), ("data.test", d.test, "file")],
        "virt-plot": [("model.init", m.init, "model_dir"), ("data.test", d.test, "file")],
        "export": [("export.model", cfg.export.model, "export_model")],
        "serve": [("serve.model", cfg.serve.model, "dir"), ("serve.index", cfg.serve.index, "index"),
                  ("serve.rerank", cfg.serve.rerank, "dir")],
        "index": [("index.model", cfg.index.model, "dir"), ("index.corpus", cfg.index.corpus, "file")],
        "search": [("search.index", cfg.search.index, "index"), ("search.queries", cfg.search.queries, "file"),
                   ("search.rerank", cfg.search.rerank, "dir")],
    }.get(t, [])


def contract_model(cfg):
    """The model directory whose data contract (model.json's "data" block) `cfg.task` reuses, or None."""
    return {"evaluate": cfg.model.init, "predict": cfg.model.init, "export": cfg.export.model,
            "index": cfg.index.model}.get(cfg.task)


def pair_files(cfg):
    """`[(key, path, labelled)]`: the pair files `cfg.task` reads with the data.* keys, and whether it needs
    their label column (checked by training.contract.check_pair_columns before the task is imported)."""
    from config.schema import TRAINING_TASKS
    from data.readers import is_pair_file

    d, t = cfg.data, cfg.task
    if t in TRAINING_TASKS and t != "pretrain":
        return [("data.train", d.train, True), ("data.valid", d.valid, True), ("data.test", d.test, True)]
    corpus = cfg.index.corpus
    return {
        "evaluate": [("data.test", d.test, True) if d.test else ("data.valid", d.valid, True)],
        "predict": [("data.test", d.test, False)],
        "export": [("data.test", d.test, False)],  # labelled or not: the int8 gate judges either way
        "index": [("index.corpus", corpus, False)] if corpus and is_pair_file(corpus, d.format) else [],
    }.get(t, [])


def build_parser():
    tasks = "\n".join(f"  {name:<10} {spec[3]}" for name, spec in TASKS.items())
    p = argparse.ArgumentParser(
        description="Text-pair matching toolkit (TensorFlow / Keras 3).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"tasks:\n{tasks}\n\n{MAIN_KEYS}")
    p.add_argument("--task", required=True, choices=sorted(TASKS), metavar="TASK", help="see the list below")
    p.add_argument("--config", help="YAML config (default: config/<task>.yaml)")
    p.add_argument("--set", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set train.epochs=3 model.num_layers=2")
    p.add_argument("--out", help="run directory (default runs/<task>/<timestamp>) or output file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


@contextlib.contextmanager
def terminate_as_exit():
    """SIGTERM outside training (which saves a checkpoint on it, training.trainer) ends the process through
    `finally` blocks, as Ctrl-C does: the run lock is released. Main thread only (signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(143)

    old = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv=None):
    args = build_parser().parse_args(argv)
    quiet_start_up()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)
    module, func, default_cfg, _ = TASKS[args.task]
    try:
        from config import given_keys, load_config, parse_overrides
        from training.contract import apply_contract, check_pair_columns, command, recorded_command
        from training.rundir import check_out, preflight, run_lock

        if args.out is not None and not args.out.strip():  # `--out "$OUT"` with OUT unset: was taken as no --out
            raise ValueError("--out is empty (an unset shell variable?): give a directory, or leave --out out")
        path = args.config or ROOT / "config" / f"{default_cfg}.yaml"
        overrides = parse_overrides(args.set) + [f"task={args.task}"]
        if args.out:
            overrides.append(f"out={args.out}")
        cfg = load_config(path, overrides)
        # Before the task imports TensorFlow: the data.* keys the model remembers and the user did not give,
        # the output path, the lock on an output directory (before its contents are judged: a run in
        # progress is named as such), the input paths, then the pair files' columns.
        origins = apply_contract(cfg, contract_model(cfg), given_keys(args.config, parse_overrides(args.set)))
        inputs = task_inputs(cfg)
        check_out(cfg.task, cfg.out, inputs)
        with recorded_command(sys.argv[1:] if argv is None else argv), run_lock(cfg, command()), \
                terminate_as_exit():
            preflight(cfg, inputs)
            check_pair_columns(cfg, pair_files(cfg), origins)
            getattr(importlib.import_module(module), func)(cfg)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for users; --debug shows the traceback
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message or type(e).__name__}", file=sys.stderr)  # one line, whatever raised
        trainer = sys.modules.get("training.trainer")  # not imported (no TensorFlow start-up) for config errors
        return 143 if trainer and isinstance(e, trainer.TrainingInterrupted) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
