"""The model card: a README.md in every model directory a training run writes and in every export
directory, for a person who finds the directory without its command history.

It is rendered from files only (model.json, and the run's metrics.json and config.yaml beside the
model directory), as plain JSON and YAML: no TensorFlow, so any layer may write one. What it says:
the kind and architecture, the base checkpoint, the data files (rows, sha256) and columns, the labels,
the metrics per split with their 95% intervals, the effective configuration, the commands that made
the model (and the export), and how to load, evaluate, export and serve it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from common.files import write_text
from training.contract import command

log = logging.getLogger(__name__)

CARD = "README.md"
_SPLITS = ("valid", "test")  # the model's own scores in metrics.json (teacher and baseline have theirs)


def write_card(directory, model_dir=None, run_dir=None, export=None):
    """Write `<directory>/README.md` (atomically) for the model of `model_dir` (default: `directory`),
    its training run `run_dir` (default: the parent of `model_dir` when it holds metrics.json) and, for
    an export directory, the export's `export` report (parity.json). A card that cannot be written is
    a warning, never a failed run: the model it describes is complete without it. Returns the path or None."""
    directory = Path(directory)
    try:
        text = render_card(directory, model_dir, run_dir, export)
        return write_text(directory / CARD, text)
    except Exception as e:  # noqa: BLE001 - any failure (a missing or odd file) costs the card only
        log.warning("%s: model card not written (%s: %s)", directory, type(e).__name__, e)
        return None


def render_card(directory, model_dir=None, run_dir=None, export=None):
    """The card's Markdown (see write_card for the arguments)."""
    directory = Path(directory)
    model_dir = Path(model_dir) if model_dir is not None else directory
    meta = json.loads((directory / "model.json").read_text(encoding="utf-8"))
    if run_dir is None and (model_dir.resolve().parent / "metrics.json").is_file():
        run_dir = model_dir.parent
    metrics = _read_json(Path(run_dir) / "metrics.json") if run_dir else None
    config = Path(run_dir) / "config.yaml" if run_dir else None
    kind = meta.get("kind", "?")
    title = f"{kind} export `{export.get('name')}` (version {export.get('version')})" if export else f"{kind} model"
    parts = [f"# {title}\n",
             f"Made by textmatch `--task {meta.get('task', '?')}`"
             + (f", then exported from `{model_dir}`" if export else "") + ".\n",
             _architecture(meta), _data(meta.get("data")), _metrics(metrics, run_dir)]
    if export:
        parts.append(_export(export))
    parts += [_config(config), _commands(meta, export), _usage(directory, bool(export))]
    return "\n".join(p for p in parts if p)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _architecture(meta):
    cfg = (meta.get("model") or {}).get("config") or {}
    enc = cfg.get("encoder") or {}
    init = meta.get("init", "not recorded")
    rows = [("kind", meta.get("kind")), ("base checkpoint (model.init)", "null (random weights)" if init is None else init),
            ("layers", enc.get("num_layers")), ("hidden size", enc.get("hidden_size")),
            ("attention heads", enc.get("num_heads")), ("pooling", cfg.get("pooling")),
            ("max_seq_len", meta.get("max_seq_len")), ("vocabulary", (meta.get("tokenizer") or {}).get("vocab_size")),
            ("labels (class order)", ", ".join(f"`{n}`" for n in meta.get("labels") or []) or None)]
    return "## Model\n\n" + _table(("", ""), [(k, _code(v)) for k, v in rows if v is not None])


def _data(block):
    if not block:
        return "## Data\n\nNot recorded (a model directory from before model.json recorded its data).\n"
    columns = ", ".join(f"`data.{k}={block.get(k)}`" for k in ("format", "text_a", "text_b", "label"))
    rows = []
    for split, f in (block.get("files") or {}).items():
        where = f"`{f['path']}`" if f.get("path") else f"held out from train ({f.get('fraction')})"
        rows.append((split, where, f.get("rows"), f"`{f['sha256']}`" if f.get("sha256") else ""))
    return (f"## Data\n\nRead with {columns}. `--task evaluate`, `predict`, `export` and `index` reuse these "
            f"keys for this model unless given others.\n\n" + _table(("split", "file", "rows", "sha256"), rows))


def _metrics(metrics, run_dir):
    if not metrics:
        return "## Metrics\n\nNo metrics.json found beside the model.\n"
    blocks = {s: metrics[s] for s in _SPLITS if isinstance(metrics.get(s), dict)}
    names = [k for k in dict.fromkeys(k for b in blocks.values() for k, v in b.items()) if
             all(isinstance(b.get(k), float) for b in blocks.values() if k in b)]
    rows = [(name, *(_score(b, name) for b in blocks.values())) for name in names]
    rows.append(("n (pairs)", *(str(_n(b)) for b in blocks.values())))
    text = ("## Metrics\n\nFrom `" + str(Path(run_dir) / "metrics.json") + "`; 95% intervals in brackets where "
            "recorded.\n\n" + _table(("metric", *blocks), rows))
    intervals = metrics.get("gap_closed_ci95") or {}
    for split, share in (metrics.get("gap_closed") or {}).items():
        lo_hi = f" (95% interval {intervals[split][0]:.0%} to {intervals[split][1]:.0%})" if split in intervals else ""
        text += f"\nGap to the teacher closed ({split}): {share:.0%}{lo_hi}.\n"
    return text


def _score(block, name):
    if name not in block:
        return ""
    interval = (block.get("ci95") or {}).get(name)
    return f"{block[name]:.4f}" + (f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "")


def _n(block):
    if "n" in block:
        return block["n"]
    matrix = (block.get("confusion_matrix") or {}).get("matrix")
    return sum(map(sum, matrix)) if matrix else "?"


def _export(report):
    status = report.get("status") or {}
    rows = [(name, state) for name, state in status.items()]
    return (f"## Export\n\nParity-checked against the Keras model on {report.get('pairs')} pairs "
            f"({report.get('pairs_source')}); max_seq_len {report.get('max_seq_len')}, "
            f"tokenizer {report.get('tokenizer')}, ONNX opset {report.get('opset')}. Details: `parity.json`.\n\n"
            + _table(("artifact", "status"), rows))


def _config(path):
    if path is None or not path.is_file():
        return ""
    return f"## Configuration\n\nThe effective configuration (`{path}`):\n\n```yaml\n{path.read_text(encoding='utf-8')}```\n"


def _commands(meta, export):
    lines = [f"Trained with: `{meta['command']}`" if meta.get("command") else
             "Trained outside `run_tasks.py` (no command recorded)."]
    if export and command():
        lines.append(f"Exported with: `{command()}`")
    return "## Commands\n\n" + "\n\n".join(lines) + "\n"


def _usage(directory, export):
    d = str(directory)
    py = (f'```python\nimport textmatch\n\nm = textmatch.load("{d}")\n'
          f'm.predict([("how old are you", "what is your age")])  # [N, classes] in the order of m.labels\n'
          f'# bi-encoders (sbert, virt): m.encode(texts), m.rank(query, candidates)\n```\n')
    cmds = ([] if export else [f"python run_tasks.py --task evaluate --set model.init={d} data.test=test.csv"]) + [
        f"python run_tasks.py --task predict --set model.init={d} data.test=pairs.csv --out scores.csv"]
    if not export:
        cmds.append(f"python run_tasks.py --task export --set export.model={d} --out exports/<name>")
    cmds.append(f"python run_tasks.py --task serve --set serve.model={d}   # TF Serving's REST API on :8501")
    return ("## Use\n\n" + py + "\n```bash\n" + "\n".join(cmds) + "\n```\n\nThe data files need the columns of "
            "*Data* above (or give `data.text_a/text_b/label`). Reference: docs/tasks.md, docs/export.md, "
            "docs/serving.md in the textmatch repository.\n")


def _code(value):
    return f"`{value}`" if isinstance(value, (str, int, float)) and not str(value).startswith("`") else str(value)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
