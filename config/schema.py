"""Typed run configuration: dataclasses filled from YAML plus ``section.key=value`` overrides.

    from config import load_config, parse_overrides, save_config
    cfg = load_config("config/finetune.yaml", ["train.epochs=5", "model.pooling=mean"])
    cfg.train.epochs                        # -> 5
    save_config(cfg, "runs/x/config.yaml")  # load_config("runs/x/config.yaml") == cfg

    # CLI: accepts "--set a.b=1 c.d=2" as well as repeated --set
    p.add_argument("--config"); p.add_argument("--set", action="append", nargs="+", default=[])
    cfg = load_config(args.config, parse_overrides(args.set))

Types are checked strictly against the annotations; errors are ``ConfigError`` naming the key.
Each field declares its allowed values next to it (``bounded``, ``choice``, ``pattern``). Renamed keys
(``RENAMED``) are still read under their old names, with a deprecation line.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key, declared next to it with ``bounded``."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, v) -> bool:  # written with `not`, so NaN (every comparison False) is out of range
        return not ((self.ge is not None and not v >= self.ge) or (self.gt is not None and not v > self.gt)
                    or (self.le is not None and not v <= self.le) or (self.lt is not None and not v < self.lt))

    def __str__(self) -> str:  # ">= 0 and < 1"
        return " and ".join(f"{op} {limit:g}" for op, limit in
                            ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if limit is not None)


def bounded(default, **limits):
    """A dataclass field whose value must lie in ``Range(**limits)`` (checked when a config is loaded)."""
    return field(default=default, metadata={"range": Range(**limits)})


def choice(*values: str, default: str | None):
    """A dataclass field whose value must be one of ``values`` (or null when the type allows it)."""
    return field(default=default, metadata={"choices": values})


def pattern(regex: str, description: str, default: str):
    """A dataclass field whose value must match ``regex`` in full; errors show ``description``."""
    return field(default=default, metadata={"pattern": (regex, description)})


@dataclass
class ModelConfig:
    init: str | None = "minilm"  # checkpoint dir (HF, Google TF1, ours) | "minilm" (all-MiniLM-L6-v2) | None = random
    num_layers: int | None = bounded(None, ge=1)  # keep the first k layers; None = all (random init: model.random_num_layers)
    pooling: str = choice("cls", "mean", "max", default="cls")  # sentence vector
    dropout: float = bounded(0.1, ge=0, lt=1)  # dropout rate in the encoder and the head
    allow_mismatch: bool = False  # load a checkpoint even if some weights are missing or unexpected
    lowercase: bool | None = None  # lowercase the input text; None = as the checkpoint says
    vocab: str | None = None  # random init: vocab.txt; None = build it from the training data
    vocab_lang: str = "zh"  # random init: language used when building the vocab
    vocab_min_freq: int = bounded(2, ge=1)  # random init: minimum count for a token to enter the built vocab
    random_num_layers: int = bounded(4, ge=1)  # random init: the depth when model.num_layers is null
    hidden_size: int = bounded(256, ge=1)  # random init: hidden width
    num_heads: int = bounded(4, ge=1)  # random init: attention heads
    intermediate_size: int = bounded(1024, ge=1)  # random init: feed-forward width
    max_position: int = bounded(512, ge=1)  # random init: number of position embeddings


@dataclass
class DataConfig:
    train: str | None = None  # training file; None = the generated sample data
    valid: str | None = None  # validation file; None = hold out valid_fraction of train
    test: str | None = None  # test file (optional)
    format: str = choice("auto", "csv", "tsv", "jsonl", "bq", "lcqmc", "afqmc", "mrpc", default="auto")  # auto = from the extension (or MRPC's header)
    text_a: str = "sentence1"  # column / field of the first sentence
    text_b: str = "sentence2"  # column / field of the second sentence
    label: str = "label"  # column / field of the label
    labels: list[str] | None = None  # class order; None = sorted values found in train
    on_bad_row: str = choice("error", "skip", default="error")  # what to do with malformed rows
    swap_augment: bool = False  # also train on (b, a) for every (a, b)
    max_rows: int | None = bounded(None, ge=1)  # read at most this many rows per file (quick runs)
    valid_fraction: float = bounded(0.1, gt=0, lt=1)  # share of train held out when there is no valid file
    text: list[str] = field(default_factory=list)  # plain-text or pair files for pretraining


@dataclass
class TrainConfig:
    epochs: int | None = bounded(3, ge=1)  # passes over the training data; null = by data size (train.auto_steps)
    auto_steps: int = bounded(1500, ge=1)  # epochs=null: about this many optimizer steps, within 3..10 epochs (docs/defaults.md)
    batch_size: int = bounded(32, ge=1)  # per replica
    learning_rate: float = bounded(5e-5, gt=0)  # peak learning rate
    head_lr_multiplier: float = bounded(1.0, gt=0)  # the randomly initialised head (outside the encoder) learns this much faster
    warmup_ratio: float = bounded(0.1, ge=0, le=1)  # share of steps with linear warm-up
    weight_decay: float = bounded(0.01, ge=0)  # AdamW weight decay
    clip_norm: float | None = bounded(1.0, gt=0)  # global gradient-norm clipping; None = off
    max_seq_len: int = bounded(128, ge=5)  # tokens per (pair) input, longer ones are truncated; >= 5: [CLS] a [SEP] b [SEP]
    seed: int = bounded(42, ge=0)  # random seed for data order and init
    strategy: str = choice("auto", "mirrored", "multiworker", "one_device", default="auto")  # tf.distribute strategy
    cpu_replicas: int = bounded(0, ge=0)  # split the CPU into this many logical devices (0 = off)
    mixed_precision: str | None = choice("mixed_bfloat16", "mixed_float16", default=None)  # Keras dtype policy; None = float32
    jit_compile: bool = False  # XLA-compile the train step
    metric: str = choice("accuracy", "f1", "macro_f1", "auc", "loss", default="accuracy")  # model selection / early stopping (f1 favours predicting the majority class early: docs/defaults.md)
    patience: int | None = bounded(None, ge=0)  # epochs without improvement before stopping (0 = never); null = max(2, epochs / 5) (docs/defaults.md)
    steps_per_epoch: int | None = bounded(None, ge=1)  # cap on steps per epoch (quick runs)
    eval_batch_size: int = bounded(64, ge=1)  # batch size for evaluation and prediction
    verbose: int = bounded(1, ge=0, le=2)  # Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch
    save_every: int = bounded(200, ge=1)  # steps between resume checkpoints (also saved at each epoch end)
    cache_dir: str | None = None  # token ids and teacher logits, keyed by content (common/cache.py); null = <out>/.cache (this run only), a directory = shared by the runs that name it


@dataclass
class DistillConfig:
    teacher: str | None = None  # teacher model directory
    label_weight: float = bounded(0.2, ge=0, le=1)  # weight of the hard-label cross-entropy (1 - label_weight on the soft loss); was distill.alpha
    temperature: float = bounded(10.0, gt=0)  # softmax temperature for the soft targets
    online: bool = False  # run the teacher during training instead of caching its logits
    intermediate: bool = False  # also match hidden states layer by layer
    layer_map: list[int] | None = None  # teacher layer for each student layer; None = uniform
    intermediate_weight: float = bounded(1.0, ge=0)  # weight of the intermediate-layer loss
    student_init: str = choice("teacher", "model", default="teacher")  # teacher = the student starts as the teacher's first model.num_layers layers | model = model.init's (the baseline always starts from model.init)
    swap: bool = False  # also train on every pair swapped, (b, a), from the teacher's soft targets alone (data.swap_augment also keeps their labels: symmetric relations only)
    baseline: str | None = "auto"  # the undistilled student: auto = fine-tune it in <out>/baseline | model dir | null = none


TRANSFER_SOURCES = ("swap", "random", "hard", "replace")


@dataclass
class TransferConfig:
    """Teacher-labelled transfer pairs for distill and virt (docs/transfer.md): trained on with the teacher's terms only."""
    unlabeled: str | None = None  # a pair file without labels (any data format; data.text_a / data.text_b columns) the teacher labels
    sources: list[str] = field(default_factory=list)  # pairs built from the training texts: swap (b, a) | random (a, another pair's b) | hard (a, the nearest other b by the student's initial encoder) | replace (word pieces replaced by embedding neighbours)
    ratio: float = bounded(1.0, gt=0)  # transfer pairs per gold training pair, all sources together (an equal share each)
    max_pairs: int | None = bounded(None, ge=1)  # cap on the transfer pairs; null = none
    seed: int = bounded(0, ge=0)  # the transfer pairs are a function of (training data, seed, keys)
    replace_prob: float = bounded(0.4, gt=0, le=1)  # replace: chance of each word piece being replaced (TinyBERT's p_t)
    replace_k: int = bounded(15, ge=1)  # replace: among its k nearest neighbours by input-embedding cosine (TinyBERT's K)


@dataclass
class VirtConfig:
    teacher: str | None = None  # cross-encoder teacher directory
    interaction_weight: float | None = bounded(None, ge=0)  # weight of the interaction (attention) distillation loss L_virt (paper: 1); null = 10 where the teacher leads the baseline on valid by >= 1 point, else 1 (docs/defaults.md); was virt.alpha
    student_init: str = choice("teacher", "model", default="model")  # teacher = the student's encoder starts as the teacher's first model.num_layers layers | model = model.init's (the baseline always starts from model.init)
    kd_weight: float = bounded(0.0, ge=0)  # weight of the teacher's soft targets (logit distillation); 0 = the paper
    kd_temperature: float = bounded(2.0, gt=0)  # their temperature
    layers: str = pattern(r"all|(first|last|skip)-\d+", "all|first-k|last-k|skip-k", default="all")  # layers to distil (e.g. "last-2")
    weight_schedule: str = choice("constant", "decay", default="constant")  # interaction weight over training: constant | decay (linearly to 0 at the last step)
    positions: str = choice("all", "content", default="all")  # tokens L_virt covers: all | content (no [CLS]/[SEP] rows or columns; docs/defaults.md)
    distill: bool = True  # false = ablation: no teacher, no attention distillation
    adapted_interaction: bool | None = None  # Eq. 5's adapted pooling (each text attends to the other); None = false: the baseline's mean-pooled towers (docs/defaults.md)
    fusion: bool | None = None  # Eq. 6 fusion MLP in the head; None = false: SBERT's (u, v, |u-v|) head, the baseline's (docs/defaults.md)
    layer_map: list[int] | None = None  # teacher layer for each student layer; None = uniform (same relative depth)
    plot_pair: list[str] | None = None  # virt-plot: ["text a", "text b"]; None = first row of data.test
    baseline: str | None = "auto"  # the student's siamese baseline: auto = train one (same depth) in <out>/baseline | model dir | null = none


@dataclass
class SbertConfig:
    objective: str = choice("softmax", "cosine", "mnrl", default="softmax")  # mnrl = multiple negatives ranking
    pooling: str = choice("cls", "mean", "max", default="mean")  # sentence vector
    normalize: bool = False  # L2-normalise the sentence vectors
    scale: float = bounded(20.0, gt=0)  # similarity scale for mnrl / cosine logits


@dataclass
class ExportConfig:
    model: str | None = None  # model directory to export
    name: str | None = None  # exported model name; None = the model dir's parent name (if it starts with a letter), else the kind
    opset: int = bounded(17, ge=15)  # ONNX opset (>= 15: export.onnx.MIN_OPSET)
    int8: bool = True  # also write a dynamically quantised int8 model
    fuse: bool = True  # also write onnxruntime-fused graphs (model.fused.onnx, its int8, encode.fused.onnx); each checked, withheld alone on failure
    portable_onnx: bool = False  # also publish the unfused model.onnx / encode.onnx (+ model.int8.onnx) beside the fused graphs (always published when there is no fused graph)
    ort_optimization: str | None = choice("basic", "extended", "all", default=None)  # onnxruntime graph optimisation level; None = off
    max_seq_len: int | None = bounded(None, ge=5)  # longest token row of the string signatures (as train.max_seq_len); None = the model's
    tokenizer: str = choice("fast", "bert", default="fast")  # in-graph tokeniser: fast (tf-text FastBertTokenizer) | bert (BertTokenizer)
    parity_samples: int = bounded(256, ge=1)  # generated pairs for the parity checks when data.test is not set
    parity_batch_size: int = bounded(32, ge=1)  # batch size of the parity checks
    int8_min_agreement: float = bounded(0.95, ge=0, le=1)  # int8, unlabelled pairs: least label agreement with Keras on pairs of margin >= int8_min_margin
    int8_min_margin: float = bounded(0.1, ge=0, le=1)  # fp32 top-1 minus top-2 probability (no classifier: |cosine - threshold|) of the pairs counted
    int8_max_accuracy_drop: float = bounded(1.0, ge=0)  # int8, labelled data.test: largest accuracy drop in points (agreement only reported)
    int8_force: bool = False  # publish int8 even when its check failed (fp32 failures still block everything)
    int8_calibration_pairs: int = bounded(300, ge=1)  # openvino int8 (NNCF): training pairs to calibrate on (else the parity pairs)
    int8_calibration_data: str | None = None  # openvino int8: a pair file to calibrate on (any supported format, labels not needed); None = the training file model.json's data block names, else the parity pairs
    formats: list[str] = field(default_factory=lambda: ["saved_model", "onnx", "openvino", "triton", "ovms"])  # artifacts to write (saved_model always; openvino needs onnx): frozen, hf on request; triton, ovms: hard links


@dataclass
class ServeConfig:
    model: str | None = None  # export directory (onnx/, saved_model/) or model directory (served through Keras)
    host: str = "127.0.0.1"  # bind address
    port: int = bounded(8501, ge=1, le=65535)  # bind port
    name: str | None = None  # model name in the API; None = the export's name (as in TF Serving), else the directory name
    max_batch: int = bounded(32, ge=1)  # largest dynamic batch (rows); 1 = no micro-batching
    max_batch_tokens: int = bounded(256, ge=0)  # most rows x padded tokens per batch (a longer row runs alone); 0 = rows only
    max_wait_ms: float = bounded(5.0, ge=0)  # longest wait to fill a batch
    max_texts: int = bounded(256, ge=1)  # most texts / pairs / rows per request
    max_chars: int = bounded(2000, ge=1)  # longest accepted text
    request_timeout_s: float = bounded(30.0, gt=0)  # a request's head, then its body, must arrive within this, else 408
    backend: str = choice("auto", "onnx", "openvino", "tf", default="auto")  # export directories: auto (the fastest artifact the export timed and checked) | onnx (onnxruntime) | openvino | tf (the SavedModel)
    int8: bool | None = None  # the int8 predict_ids file (onnx/model.int8.onnx, openvino/model.int8.xml): true = serve it, false = never, None = auto may pick it when it passed its gate
    fused: bool = True  # onnx backend: prefer the export's fused graphs (model.fused[.int8].onnx, encode.fused.onnx) when present
    threads: int | None = bounded(None, ge=1)  # onnxruntime / OpenVINO / TensorFlow intra-op threads; None = the runtime's default
    index: str | None = None  # search index directory (--task index) behind POST /v1/search; None = no search
    rerank: str | None = None  # /v1/search rerank: cross-encoder model or export dir | "virt" (the index's model) | None
    max_k: int = bounded(100, ge=1)  # largest k accepted by /v1/search
    warmup: list[int] = field(default_factory=lambda: [32, 128])  # sequence lengths run once per function (1 row and a full batch) before listening; [] = none


@dataclass
class IndexConfig:
    model: str | None = None  # sbert or virt model directory, or an export directory of one
    corpus: str | None = None  # candidates: text file (one per line, or id<TAB>text) or pair file (its data.text_b column)
    backend: str = choice("auto", "onnx", "openvino", "tf", default="auto")  # export directories: auto | onnx | openvino | tf (model directories run through Keras)
    batch_size: int = bounded(64, ge=1)  # texts per encoder call
    max_seq_len: int | None = bounded(None, ge=3)  # tokens per text ([CLS] t [SEP] needs 3); None = the model's max_seq_len


@dataclass
class SearchConfig:
    index: str | None = None  # index directory written by --task index
    queries: str | None = None  # one query per line (or id<TAB>text); None = stdin
    k: int = bounded(10, ge=1)  # candidates recalled (and reranked) per query
    recall: str = choice("auto", "faiss", "numpy", default="auto")  # auto = faiss when importable, else numpy
    rerank: str | None = None  # cross-encoder model or export dir | "virt" (the index's own model) | None = cosine only
    backend: str = choice("auto", "onnx", "openvino", "tf", default="auto")  # export directories: auto | onnx | openvino | tf
    batch_size: int = bounded(64, ge=1)  # rows per model call


@dataclass
class PretrainConfig:
    mask_rate: float = bounded(0.15, gt=0, lt=1)  # share of real tokens selected for MLM (80% [MASK], 10% random, 10% kept)
    whole_word: bool = False  # select whole words (all their ## pieces); WordPiece vocabularies only
    pairs: bool = False  # examples are the pair files' rows as `[CLS] a [SEP] b [SEP]` (trains segment 1, cross-text attention)


@dataclass
class RunConfig:
    """A whole run: the task plus one section per component."""
    task: str = "finetune"  # finetune|distill|sbert|virt|pretrain|export|serve|index|search
    out: str | None = None  # output directory; None = chosen by the task
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    virt: VirtConfig = field(default_factory=VirtConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    sbert: SbertConfig = field(default_factory=SbertConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


# Keys renamed so the name says what the value weighs; the old names keep working (same meaning),
# in config files, --set overrides and the config.yaml of older run directories.
RENAMED: dict[str, str] = {
    "distill.alpha": "distill.label_weight",  # it weighed the hard labels
    "virt.alpha": "virt.interaction_weight",  # it weighed the attention distillation: one name, two meanings
}


class ConfigError(ValueError):
    """Invalid configuration; the message names the offending key or file."""


class _Loader(yaml.SafeLoader):
    """SafeLoader closer to YAML 1.2: ``1e-4`` is a float; ``yes``/``on``/``2024-01-01`` stay strings."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {  # drop YAML 1.1 yes/no/on/off booleans and timestamps
    c: [r for r in rs if r[0] not in (_BOOL, "tag:yaml.org,2002:timestamp")]
    for c, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                base: dict | None = None) -> RunConfig:
    """Defaults <- ``base`` (nested dict) <- YAML file ``path`` <- ``overrides``, validated.

    >>> load_config(None, ["train.epochs=1", "data.labels=[0, 1]"]).data.labels
    ['0', '1']
    """
    raw: dict = {}
    _merge(raw, _renamed(_sections(base or {}, "the recorded configuration")))
    if path is not None:
        path = Path(path)
        _merge(raw, _renamed(_read_yaml(path), path))
    given: dict = {}  # the overrides as one source: an old and a new name among them must agree
    for item in overrides:
        key, value = _parse_override(item)
        section, _, name = key.rpartition(".")
        _merge(given, _sections({section: {name: value}} if section else {name: value}, f"--set {item}"))
    _merge(raw, _renamed(given))
    return _check_run(_build(RunConfig, raw, ""))


def given_keys(path: str | Path | None = None, overrides: Sequence[str] = ()) -> set[str]:
    """The ``section.key`` names that the config file ``path`` and ``overrides`` set (renamed keys under
    their new names): what a user gave, as opposed to the defaults. Call after ``load_config`` has
    accepted the same sources (their errors are reported there)."""
    sources = [_renamed(_read_yaml(Path(path)), Path(path))] if path else []
    for key, value in map(_parse_override, overrides):
        section, _, name = key.rpartition(".")
        sources.append(_renamed({section: {name: value}} if section else {name: value}))
    given = set()
    for src in sources:
        for section, values in src.items():
            given.update((f"{section}.{k}" for k in values) if isinstance(values, dict) else [section])
    return given


def parse_overrides(items: Iterable[str | Sequence[str]] | None) -> list[str]:
    """Flatten ``--set`` values: ``[["a.b=1", "c.d=2"], ["e.f=3"]]`` -> ``["a.b=1", "c.d=2", "e.f=3"]``."""
    return [s for item in items or () for s in ([item] if isinstance(item, str) else item)]


def config_to_dict(cfg: RunConfig) -> dict:
    """Plain nested dict (YAML-ready) of a config."""
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML that ``load_config`` reads back to an equal RunConfig."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True),
                    encoding="utf-8")


def schema_fields(cls: type = RunConfig, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every key of the schema: ``"section.key"`` -> its dataclass field (metadata: range, choices, pattern)."""
    out = {}
    for f in dataclasses.fields(cls):
        tp = get_type_hints(cls)[f.name]
        out.update(schema_fields(tp, f"{prefix}{f.name}.") if dataclasses.is_dataclass(tp) else {prefix + f.name: f})
    return out


_WARNED: set[str] = set()  # deprecation lines already logged: a run reads its configs more than once


def _renamed(src: dict, path: Path | None = None) -> dict:
    """``src`` (one source: the file ``path``, the overrides or ``base``) with the ``RENAMED`` keys under
    their new names; an old name logs one deprecation line, an old and a new name with other values is an error."""
    if not isinstance(src, dict):
        return src  # load_config reports a file that is not a mapping
    where = f"{path}: " if path is not None else ""
    out = dict(src)
    for old, new in RENAMED.items():
        section, old_key = old.split(".")
        new_key = new.split(".")[1]  # a key is renamed within its section
        sub = out.get(section)
        if not isinstance(sub, dict) or old_key not in sub:
            continue  # absent, or a malformed section that _build names
        sub = out[section] = dict(sub)
        value = sub.pop(old_key)
        if new_key in sub and sub[new_key] != value:
            raise ConfigError(f"{where}{old}={value!r} and {new}={sub[new_key]!r} disagree; "
                              f"{old} is the old name of {new}: give only {new}")
        sub[new_key] = value
        line = f"{where}{old} is deprecated: use {new} (same meaning)"
        if line not in _WARNED:
            _WARNED.add(line)
            log.warning("%s", line)
    return out


def _duplicate_keys(node, path: Path, section: str | None = None) -> None:
    """Raise ConfigError at the first key given twice in one mapping of the composed YAML ``node``: YAML
    keeps the last value, so ``epochs: 3`` above an ``epochs: 4`` (or a whole section above its repeat) was
    dropped without a word."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _duplicate_keys(item, path, section)
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict = {}
    for key, value in node.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if name is not None and name in seen:
            where = f" in section '{section}'" if section else ""
            raise ConfigError(f"{path}:{key.start_mark.line + 1}: duplicate key '{name}'{where} "
                              f"(first at line {seen[name] + 1}); YAML would keep only the last one")
        if name is not None:
            seen[name] = key.start_mark.line
        _duplicate_keys(value, path, name if section is None else f"{section}.{name}")


def _read_yaml(path: Path) -> dict:
    """The config file ``path`` as a mapping of sections, each a mapping (or empty); errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
        _duplicate_keys(yaml.compose(text, Loader=_Loader), path)
        loaded = yaml.load(text, Loader=_Loader)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:  # a binary file, or another encoding: the codec's message names no file
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          f"--config takes a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
    return _sections(loaded or {}, str(path))


_SECTIONS = {f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.default_factory)}


def _sections(src: dict, where: str) -> dict:
    """``src`` (one source of keys, named ``where``) once each of its sections is a mapping or empty:
    checked per source, since a mapping merged later (``--set train.epochs=3``) would replace a
    malformed section (``train: epochs=7``) without a word."""
    for name, value in src.items():
        if name in _SECTIONS and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping of keys ('key: value' lines indented "
                              f"under '{name}:' in a file, {name}.key=value with --set), got {value!r}")
    return src


def _merge(dst: dict, src: dict) -> None:
    """Merge ``src`` into ``dst``: sections merge key by key, everything else replaces."""
    for k, v in src.items():
        dst[k] = {**dst[k], **v} if isinstance(v, dict) and isinstance(dst.get(k), dict) else v


def _parse_override(item: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is read as YAML."""
    key, sep, text = (s.strip() for s in item.partition("="))
    if not sep or not all(key.split(".")) or key.count(".") > 1:
        raise ConfigError(f"bad override {item!r}: expected section.key=value")
    if not text:
        raise ConfigError(f"{key}: missing value in override {item!r} (use {key}=null for None)")
    try:
        return key, yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {e}") from None


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, checking every key and value."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping of keys, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in hints:
            raise ConfigError(_unknown(name, prefix, hints, isinstance(value, dict)))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{name}.")
            continue
        kwargs[key] = v = _coerce(value, tp)
        if v is _BAD:
            want = str(tp) if get_origin(tp) else tp.__name__  # "int", "float | None", "list[str]"
            raise ConfigError(f"{name}: expected {want}, got {value!r}")
        meta = fields[key].metadata
        if "choices" in meta and v is not None and v not in meta["choices"]:
            null = " or null" if _coerce(None, tp) is None else ""
            raise ConfigError(f"{name}: expected one of {'|'.join(meta['choices'])}{null}, got {v!r}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"][0], v):
            raise ConfigError(f"{name}: expected {meta['pattern'][1]}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):  # YAML reads .nan / .inf
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        rng = meta.get("range")
        if rng is not None and v is not None and v not in rng:
            null = " (or null)" if _coerce(None, tp) is None else ""
            raise ConfigError(f"{name}: must be {rng}{null}, got {v!r}")
    return cls(**kwargs)


TRAINING_TASKS = ("finetune", "distill", "sbert", "virt", "pretrain")


def _check_run(cfg: RunConfig) -> RunConfig:
    """Checks across keys and of list items; those needing a checkpoint's sizes run when it is loaded."""
    m, t = cfg.model, cfg.train
    labels = cfg.data.labels  # evaluate, predict and serve take the model's labels: a bad list went unnoticed there
    if labels is not None and not labels:
        raise ConfigError("data.labels: an empty list; give the class names in order, or null")
    twice = next((y for i, y in enumerate(labels or ()) if y in labels[:i]), None)
    if twice is not None:
        raise ConfigError(f"data.labels: {twice!r} is given twice in {labels}")
    d = cfg.data
    for (k1, v1), (k2, v2) in [(("text_a", d.text_a), ("text_b", d.text_b)), (("text_a", d.text_a), ("label", d.label)),
                               (("text_b", d.text_b), ("label", d.label))]:
        if v1 == v2:  # a model of (a, a) pairs trained without a word
            raise ConfigError(f"data.{k1} and data.{k2} are both {v1!r}: each names its own column")
    short = next((n for n in cfg.serve.warmup if n < 1), None)  # runtime.batching.warm_up clamped it to 1
    if short is not None:
        raise ConfigError(f"serve.warmup: sequence lengths must be >= 1, got {short} in {cfg.serve.warmup}")
    if cfg.task in TRAINING_TASKS and m.init is None:  # the random-init architecture is all in the config
        if t.max_seq_len > m.max_position:  # would train, then fail in evaluate on longer texts
            raise ConfigError(f"train.max_seq_len={t.max_seq_len}: longer than model.max_position={m.max_position} "
                              f"(the position embeddings of a model.init=null model); lower one or raise the other")
        if m.hidden_size % m.num_heads:
            raise ConfigError(f"model.hidden_size={m.hidden_size}: must be a multiple of "
                              f"model.num_heads={m.num_heads}")
    unknown = [x for x in cfg.transfer.sources if x not in TRANSFER_SOURCES]
    if unknown:
        raise ConfigError(f"transfer.sources: unknown {unknown}; choose from {list(TRANSFER_SOURCES)}")
    if len(set(cfg.transfer.sources)) != len(cfg.transfer.sources):
        raise ConfigError(f"transfer.sources: a source is given twice in {cfg.transfer.sources}")
    if cfg.transfer.unlabeled or cfg.transfer.sources:  # before a teacher or baseline is trained
        if cfg.task == "distill" and cfg.distill.swap:
            raise ConfigError("distill.swap with transfer pairs: give swap in transfer.sources instead")
        if cfg.task == "virt" and not cfg.virt.distill:
            raise ConfigError("transfer pairs need the teacher: virt.distill=false has none")
    return cfg


def _unknown(name: str, prefix: str, hints: dict, is_mapping: bool) -> str:
    pool = {k: f"{prefix}{k}" for k in hints}  # leaf name -> full name to suggest
    if not prefix:  # a top-level typo may be a key missing its section: "epochs" -> "train.epochs"
        for k, tp in hints.items():
            for f in get_type_hints(tp) if dataclasses.is_dataclass(tp) else ():
                pool.setdefault(f, f"{k}.{f}")
    close = difflib.get_close_matches(name[len(prefix):], list(pool), n=1)
    kind = "section" if not prefix and is_mapping else "key"
    return f"unknown {kind} '{name}'" + (f" (did you mean '{pool[close[0]]}'?)" if close else "")


_BAD = object()  # sentinel: value does not fit the type


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` (strict: no bool->int, no "3"->int), or ``_BAD``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _BAD
        return next((v for a in args if (v := _coerce(value, a)) is not _BAD), _BAD)
    if origin is list:
        items = [_coerce(v, args[0]) for v in value] if isinstance(value, list) else [_BAD]
        return _BAD if any(i is _BAD for i in items) else items
    if isinstance(value, bool) or tp is bool:
        return value if tp is bool and isinstance(value, bool) else _BAD
    accepted = {int: int, float: (int, float), str: (str, int, float)}.get(tp, ())
    return tp(value) if isinstance(value, accepted) else _BAD  # float(3) -> 3.0, str(0) -> "0"

