"""Train and evaluate every model kind on one dataset; write an accuracy table (docs/results.md).

    python bench/accuracy_table.py --data ../shared/data/mrpc --out runs/table-mrpc
    python bench/accuracy_table.py --data ../shared/data/bq --out runs/table-bq --set data.max_rows=20000

Runs go one after another (each is `run_tasks.py` in a subprocess, so memory is
returned between runs); a finished run (its metrics.json exists) is reused, so
an interrupted table resumes where it stopped. Output: table.md and table.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dataset_files(data_dir):
    d = Path(data_dir)
    pick = lambda *names: next((str(d / n) for n in names if (d / n).exists()), None)  # noqa: E731
    train = pick("train.tsv", "train.csv", "train.jsonl")
    valid = pick("valid.tsv", "valid.csv", "dev.tsv", "dev.csv", "valid.jsonl")
    test = pick("test.tsv", "test.csv", "test.jsonl")
    if train is None:
        sys.exit(f"{d}: no train.(tsv|csv|jsonl)")
    return train, valid, test


def runs(out, large_layers, tiny_layers, scratch=None):
    """(name, task, overrides, directory) in dependency order.

    Every large row names its depth explicitly: the task configs carry demo
    defaults (virt.yaml's student keeps 3 layers) that must not leak into a
    table that compares same-size models.
    """
    teacher = f"{out}/ce_large/model"
    # The students' baselines are rows of their own: each student run scores them instead of
    # training its own copy (virt.baseline / distill.baseline).
    large = [f"model.num_layers={large_layers or 'null'}", f"virt.baseline={out}/siamese/model"]
    tiny = [f"model.num_layers={tiny_layers}", "model.pooling=mean"]
    rows = [
        ("cross-encoder large", "finetune", ["model.pooling=mean"] + large, "ce_large"),
        ("siamese (sbert head)", "virt", ["virt.distill=false", "virt.adapted_interaction=false"] + large, "siamese"),
        ("VIRT", "virt", [f"virt.teacher={teacher}"] + large, "virt"),
        ("sbert softmax", "sbert", ["sbert.objective=softmax"] + large, "sbert"),
        ("cross-encoder tiny", "finetune", tiny, "ce_tiny"),
        ("distilled tiny", "distill", [f"distill.teacher={teacher}", f"distill.baseline={out}/ce_tiny/model"] + tiny,
         "distilled_tiny"),
        ("VIRT w/o distillation", "virt", ["virt.distill=false", "virt.adapted_interaction=true"] + large, "virt_no_distill"),
        ("VIRT w/o adapted interaction", "virt", [f"virt.teacher={teacher}", "virt.adapted_interaction=false"] + large, "virt_no_adapted"),
        # the paper's own ablation keeps Eq. 6's fusion MLP on mean-pooled u, v (Sec. 4.5.1)
        ("VIRT w/o adapted interaction, Eq. 6 fusion", "virt",
         [f"virt.teacher={teacher}", "virt.adapted_interaction=false", "virt.fusion=true"] + large, "virt_fusion"),
        # the other corner of pooling x head: Eq. 5's pooling under SBERT's (u, v, |u-v|) head
        ("VIRT, adapted pooling + `(u, v, \\|u-v\\|)` head", "virt",
         [f"virt.teacher={teacher}", "virt.adapted_interaction=true", "virt.fusion=false"] + large, "virt_adapted_plain_head"),
    ]
    if scratch is not None:  # same architecture as the large cross-encoder, random initial weights
        rows.insert(1, ("cross-encoder large, from scratch", "finetune", ["model.pooling=mean"] + large + scratch, "ce_scratch"))
    return rows


def command(task, run_dir, data, common, overrides):
    """run_tasks.py argv for one row; the row's own keys come last, so they win over --set."""
    return [sys.executable, str(ROOT / "run_tasks.py"), "--task", task, "--out", str(run_dir),
            "--set", *data, "train.verbose=2", *common, *overrides]


def table_rows(name, m, wall=""):
    """Rows for one run's metrics.json: its classifier and, for a bi-encoder, the cosine rule."""
    split = "test" if "test" in m else "valid"
    common = {"split": split, "epochs": m.get("training", {}).get("best_epoch"), "wall_s": wall}
    rows = []
    if "accuracy" in m[split]:
        rows.append({"model": name, "accuracy": m[split]["accuracy"], "f1": m[split].get("f1"),
                     "auc": m[split].get("auc"), "valid_accuracy": m["valid"].get("accuracy"), **common})
    if "cosine_accuracy" in m[split]:  # a bi-encoder's other decision rule: cosine > threshold chosen on valid
        rows.append({"model": f"{name}, cosine > {m[split]['cosine_threshold']:.2f}",
                     "accuracy": m[split]["cosine_accuracy"], "f1": m[split].get("cosine_f1"),
                     "auc": m[split].get("cosine_auc"), "valid_accuracy": m["valid"].get("cosine_accuracy"), **common})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="directory with train/(valid)/test files")
    p.add_argument("--out", required=True)
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every run")
    p.add_argument("--only", nargs="*", help="run only these directory names (ce_large, virt, ...)")
    p.add_argument("--large-layers", type=int, default=None, help="layers of the large model (default: all)")
    p.add_argument("--tiny-layers", type=int, default=2)
    p.add_argument("--scratch", nargs="*", default=None,
                   help="add a from-scratch cross-encoder row with these extra overrides "
                        "(e.g. model.init=null model.vocab=<vocab.txt> model.hidden_size=256 ...)")
    args = p.parse_args(argv)
    train, valid, test = dataset_files(args.data)
    data = [f"data.train={train}"] + ([f"data.valid={valid}"] if valid else []) + ([f"data.test={test}"] if test else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = set(json.loads(subprocess.run([sys.executable, "-c", "import run_tasks, json; print(json.dumps(list(run_tasks.TASKS)))"],
                                          cwd=ROOT, capture_output=True, text=True).stdout or "[]"))
    rows = []
    for name, task, overrides, dirname in runs(out, args.large_layers, args.tiny_layers, args.scratch):
        run_dir = out / dirname
        if args.only and dirname not in args.only and not (run_dir / "metrics.json").exists():
            continue  # not asked for now; finished runs still appear in the table
        if task not in tasks:
            print(f"skip {name}: task {task!r} not available")
            continue
        if not (run_dir / "metrics.json").exists():
            cmd = command(task, run_dir, data, args.set, overrides)
            print("$", " ".join(cmd), flush=True)
            t0 = time.time()
            with open(out / f"{dirname}.log", "w") as log:
                code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode  # paths as the caller wrote them
            if code:
                print(f"{name}: failed (exit {code}), see {out / (dirname + '.log')}")
                continue
            (run_dir / "wall_seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
        m = json.loads((run_dir / "metrics.json").read_text())
        wall = (run_dir / "wall_seconds.txt").read_text().strip() if (run_dir / "wall_seconds.txt").exists() else ""
        rows.extend(table_rows(name, m, wall))
        write_table(out, rows, args)
    write_table(out, rows, args)


def write_table(out, rows, args):
    head = ("| model | eval split | accuracy | F1 | AUC | valid acc | best epoch | wall (s) |\n"
            "|---|---|---|---|---|---|---|---|\n")
    fmt = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    body = "".join(f"| {r['model']} | {r['split']} | {fmt(r['accuracy'])} | {fmt(r['f1'])} | {fmt(r['auc'])} | "
                   f"{fmt(r['valid_accuracy'])} | {r['epochs']} | {r['wall_s']} |\n" for r in rows)
    note = f"\n{args.data}, {datetime.now():%Y-%m-%d}, overrides: {' '.join(args.set) or 'none'}\n"
    (out / "table.md").write_text(head + body + note)
    (out / "table.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
