"""virt-plot: the paper's case study (Fig. 6) for one pair of texts.

Side-by-side heat maps of the x -> y attention of
- the cross-encoder teacher (its x -> y block, rows renormalised, head-averaged),
- the VIRT student's virtual map `softmax(Q~x K~y^T / sqrt(d))` (head-averaged),
- optionally a plain siamese baseline's virtual map (e.g. a `virt.distill=false` run),
with x tokens on the rows and y tokens (after y's [CLS]) on the columns, one
shared colour scale, written to `<out>/virt_attention.png` (+ the maps and
numbers in `virt_attention.json`; layers there are 1-based, as in the titles).
The maps are computed by `virt.losses.virtual_maps` / `teacher_maps`, the very
functions the distillation loss uses.

    python run_tasks.py --task virt-plot --set model.init=runs/virt/<stamp>/model \\
        virt.teacher=runs/virt/<stamp>/teacher/model virt.baseline=runs/virt/<other>/model \\
        virt.plot_pair='["a man plays a guitar", "someone plays music"]' virt.layers=last-1

Layer: the deepest layer of `virt.layers` applied to each student's depth
(`all` / `last-1`: the last layer, `first-k`: the k-th); the teacher layer is
`virt.layer_map[l]` or the uniform map used in training. A baseline trained from
random init must share the teacher's vocabulary (`model.vocab=<teacher>/vocab.txt`).
"""

from __future__ import annotations

import json
import logging
import unicodedata
from datetime import datetime
from pathlib import Path

import numpy as np

from modeling.checkpoints import CheckpointError
from modeling.model_dir import load_model_dir
from virt.losses import select_layers, teacher_inputs, teacher_maps, uniform_layer_map, virtual_maps

log = logging.getLogger(__name__)

DEFAULT_PAIR = ("A man is playing a guitar on the stage.", "Someone is performing music for a crowd.")
SIAMESE_KINDS = ("virt", "sbert")
PNG_NAME = "virt_attention.png"
# Fonts tried (in order) when tokens hold CJK characters; DejaVu Sans has none.
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "Source Han Sans SC", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")


# ----------------------------------------------------------------------------- maps
def _batch(ids):
    import tensorflow as tf

    ids = tf.constant([ids], tf.int32)
    return ids, tf.ones_like(ids)


def teacher_xy_map(encoder, x_ids, y_ids, layer):
    """Head-averaged, row-renormalised x -> y block of the teacher's joint attention: [m, n]."""
    x, xm = _batch(x_ids)
    y, ym = _batch(y_ids)
    probs = encoder(teacher_inputs(x, xm, y, ym), output_attentions=True)["attentions"][layer]
    t_xy, _ = teacher_maps(probs, xm, ym)
    return t_xy.numpy()[0].mean(axis=0)


def student_xy_map(encoder, x_ids, y_ids, layer):
    """Head-averaged virtual x -> y map softmax(Q~x K~y^T / sqrt(d)) of a siamese encoder: [m, n]."""
    x, xm = _batch(x_ids)
    y, ym = _batch(y_ids)
    out_x = encoder({"input_ids": x, "attention_mask": xm}, output_qk=True)
    out_y = encoder({"input_ids": y, "attention_mask": ym}, output_qk=True)
    s_xy, _ = virtual_maps(out_x["query_states"][layer], out_x["key_states"][layer],
                           out_y["query_states"][layer], out_y["key_states"][layer], xm, ym)
    return s_xy.numpy()[0].mean(axis=0)


# ----------------------------------------------------------------------------- plotting
def _has_cjk(tokens):
    return any(unicodedata.east_asian_width(c) in "WF" for t in tokens for c in t)


def _font_family(tokens):
    if not _has_cjk(tokens):
        return None
    from matplotlib import font_manager

    have = {f.name for f in font_manager.fontManager.ttflist}
    found = [f for f in CJK_FONTS if f in have]
    if not found:
        log.warning("no CJK font found (tried %s): Chinese tokens may show as boxes", ", ".join(CJK_FONTS))
        return None
    return [*found, "DejaVu Sans"]


def plot_maps(panels, x_tokens, y_tokens, path, suptitle=None):
    """Heat maps side by side: `panels` = [(title, map [m, n]), ...], one shared colour scale."""
    import matplotlib

    from matplotlib.figure import Figure

    m, n = len(x_tokens), len(y_tokens)
    vmin = min(float(np.min(a)) for _, a in panels)  # one scale for all panels, spanning all of them
    vmax = max(float(np.max(a)) for _, a in panels)
    vmax = vmax if vmax > vmin else vmin + 1e-6
    cell = 0.42
    width = len(panels) * (max(n, 4) * cell + 1.6) + 1.5
    height = max(m, 4) * cell + 2.6
    family = _font_family(list(x_tokens) + list(y_tokens))
    with matplotlib.rc_context({"font.family": family} if family else {}):
        fig = Figure(figsize=(width, height), layout="constrained", dpi=110)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for i, (ax, (title, a)) in enumerate(zip(axes, panels)):
            im = ax.imshow(a, cmap="viridis", vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")
            ax.set_xticks(range(n), labels=y_tokens, rotation=90, fontsize=9)
            ax.set_yticks(range(m), labels=x_tokens, fontsize=9)
            ax.set_xlabel("y tokens (keys)")
            if i == 0:
                ax.set_ylabel("x tokens (queries)")
            ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="attention x -> y")
        if suptitle:
            fig.suptitle(suptitle, fontsize=10)
        fig.savefig(path)
    return path


# ----------------------------------------------------------------------------- task
def model_name(path):
    """A short label for a model directory: `<run>/<stamp>` for `.../<run>/<stamp>/model`."""
    parts = Path(path).resolve().parts[1:]
    if parts and parts[-1] == "model":
        parts = parts[:-1]
    return "/".join(parts[-2:]) or str(path)


def pick_pair(cfg):
    """`virt.plot_pair`, else the first row of `data.test`, else a built-in English pair."""
    pair = cfg.virt.plot_pair
    if pair is not None:
        if len(pair) != 2 or not all(t.strip() for t in pair):
            raise ValueError(f"virt.plot_pair: expected two non-empty texts, got {pair!r}")
        return tuple(pair)
    d = cfg.data
    if d.test:
        from data import read_pairs

        rows = read_pairs(d.test, format=d.format, text_a=d.text_a, text_b=d.text_b, label=None,
                          on_bad_row="skip")
        return rows.text_a[0], rows.text_b[0]
    return DEFAULT_PAIR


def encode_pair(tokenizer, text_x, text_y, max_len):
    """`(x_ids, y_ids, x_tokens, y_tokens)`: VIRT's `[CLS] x [SEP]` / `[CLS] y [SEP]`, y tokens after [CLS]."""
    x_ids = tokenizer.encode_texts([text_x], max_len)[0]
    y_ids = tokenizer.encode_texts([text_y], max_len)[0]
    return x_ids, y_ids, tokenizer.decode_tokens(x_ids), tokenizer.decode_tokens(y_ids[1:])


def _student_path(cfg):
    path = cfg.model.init
    if path is None or path == "minilm":
        raise CheckpointError("set model.init to the VIRT student's model directory, "
                              "e.g. --set model.init=runs/virt/<stamp>/model")
    return Path(path)


def _teacher_path(cfg, student_path):
    if cfg.virt.teacher is not None:
        return Path(cfg.virt.teacher)
    sibling = student_path.parent / "teacher" / "model"  # a virt run fine-tunes its teacher there
    if (sibling / "model.json").is_file():
        log.info("virt.teacher not set: using the run's own teacher %s", sibling)
        return sibling
    raise CheckpointError("set virt.teacher to the cross-encoder model directory "
                          "(a virt run without virt.teacher writes it to <run>/teacher/model)")


def _baseline_path(cfg, student_path):
    """virt.baseline, or with `auto` the baseline a virt run trained beside its student (if any)."""
    if cfg.virt.baseline != "auto":
        return Path(cfg.virt.baseline) if cfg.virt.baseline else None
    sibling = Path(student_path).parent / "baseline" / "model"
    return sibling if (sibling / "model.json").is_file() else None


def plot_task(cfg):
    """Teacher / VIRT / (baseline) x -> y attention of one pair -> <out>/virt_attention.png.

    Returns a dict with the output path, the layers and the mean absolute
    difference of each student map from the teacher's.
    """
    student_path = _student_path(cfg)
    student = load_model_dir(student_path, expect_kind=SIAMESE_KINDS)
    teacher_path = _teacher_path(cfg, student_path)
    teacher = load_model_dir(teacher_path, expect_kind="cross_encoder")
    models = [("VIRT student", student_path, student)]
    baseline_path = _baseline_path(cfg, student_path)
    if baseline_path is not None:
        baseline = load_model_dir(baseline_path, expect_kind=SIAMESE_KINDS)
        models.append(("siamese baseline", baseline_path, baseline))

    text_x, text_y = pick_pair(cfg)
    max_len = student.max_seq_len
    x_ids, y_ids, x_tokens, y_tokens = encode_pair(student.tokenizer, text_x, text_y, max_len)
    ids = {}  # each model reads the pair with its own tokenizer; the tokens must agree
    for role, path, loaded in [("teacher", teacher_path, teacher)] + models[1:]:
        enc_x, enc_y, *tokens = encode_pair(loaded.tokenizer, text_x, text_y, max_len)
        ids[id(loaded)] = (enc_x, enc_y)
        if tuple(tokens) != (x_tokens, y_tokens):
            raise CheckpointError(f"the {role} ({path}) tokenises the pair differently from the VIRT student "
                                  f"({tokens} vs {[x_tokens, y_tokens]}); use models with the same vocabulary")
    ids[id(student)] = (x_ids, y_ids)

    t_enc = teacher.model.encoder
    ns = student.model.encoder.num_layers
    l_student = select_layers(cfg.virt.layers, ns)[-1]
    layer_map = cfg.virt.layer_map or uniform_layer_map(ns, t_enc.num_layers)
    if len(layer_map) != ns or not all(0 <= t < t_enc.num_layers for t in layer_map):
        raise ValueError(f"virt.layer_map={cfg.virt.layer_map}: need {ns} teacher layer indices "
                         f"in 0..{t_enc.num_layers - 1}")
    l_teacher = layer_map[l_student]
    t_map = teacher_xy_map(t_enc, *ids[id(teacher)], l_teacher)

    panels = [(f"teacher (cross-encoder)\n{model_name(teacher_path)}, layer {l_teacher + 1}", t_map)]
    result = {"x": text_x, "y": text_y, "x_tokens": x_tokens, "y_tokens": y_tokens,
              "teacher": {"model": str(teacher_path), "layer": l_teacher + 1, "map": t_map.tolist()}, "students": []}
    for role, path, loaded in models:
        enc = loaded.model.encoder
        layer = l_student if loaded is student else select_layers(cfg.virt.layers, enc.num_layers)[-1]
        s_map = student_xy_map(enc, *ids[id(loaded)], layer)
        mad = float(np.mean(np.abs(s_map - t_map)))
        panels.append((f"{role}\n{model_name(path)}, layer {layer + 1}\nmean |diff| vs teacher {mad:.4f}", s_map))
        result["students"].append({"role": role, "model": str(path), "layer": layer + 1, "mean_abs_diff": mad,
                                   "map": s_map.tolist()})
        print(f"{role} ({path}, layer {layer + 1}): mean |M~_xy - M_xy| = {mad:.4f}")

    out = Path(cfg.out) if cfg.out else Path("runs") / "virt-plot" / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    short = lambda t: t if len(t) <= 60 else t[:57] + "..."  # noqa: E731
    png = plot_maps(panels, x_tokens, y_tokens, out / PNG_NAME,
                    suptitle=f"x -> y attention (head average)   x: {short(text_x)}   y: {short(text_y)}")
    (out / "virt_attention.json").write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"teacher layer {l_teacher + 1} vs student layer {l_student + 1}; wrote {png}")
    result["png"] = str(png)
    return result
