"""Tests for the typed configuration system (config/)."""
from pathlib import Path

import pytest

from config import (ConfigError, RunConfig, config_to_dict, load_config, parse_overrides,
                    save_config, schema_fields)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_yaml_files_present():
    names = {p.stem for p in YAMLS}
    assert {"finetune", "distill", "sbert", "virt", "export", "serve", "pretrain"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_yaml_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.task == path.stem


def test_task_yaml_contents():
    ft = load_config(CONFIG_DIR / "finetune.yaml")
    assert (ft.model.pooling, ft.train.epochs, ft.train.max_seq_len) == ("cls", None, 64)
    # every training task trains by the data-size rule (issue 26: 2 epochs left small files at chance)
    assert [load_config(CONFIG_DIR / f"{t}.yaml").train.epochs for t in ("sbert", "pretrain")] == [None, None]
    assert load_config(CONFIG_DIR / "distill.yaml").model.num_layers == 2
    d = load_config(CONFIG_DIR / "distill.yaml")
    assert (d.distill.label_weight, d.distill.temperature, d.distill.baseline) == (0.5, 2.0, "auto")
    assert (d.model.pooling, d.train.epochs, d.train.learning_rate, d.train.head_lr_multiplier) == ("mean", None, 1e-4, 10)
    original = load_config(CONFIG_DIR / "distill.yaml", ["distill.label_weight=0.2", "distill.temperature=10"]).distill
    assert (original.label_weight, original.temperature) == (0.2, 10.0)  # the original project's setting stays reachable
    s = load_config(CONFIG_DIR / "sbert.yaml").sbert
    assert (s.objective, s.pooling) == ("softmax", "mean")
    v = load_config(CONFIG_DIR / "virt.yaml")
    assert (v.virt.interaction_weight, v.virt.layers, v.model.pooling) == (None, "all", "mean")  # None: by the teacher's lead
    assert (v.model.num_layers, v.train.epochs, v.virt.baseline, v.virt.fusion, v.virt.adapted_interaction) == (None, None, "auto", None, None)
    p = load_config(CONFIG_DIR / "pretrain.yaml").model
    assert p.init is None and (p.num_layers, p.hidden_size, p.num_heads) == (4, 256, 4)


def test_defaults_without_file():
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.model.init == "minilm" and cfg.data.text == [] and cfg.train.learning_rate == 5e-5


def test_overrides_of_every_type():
    cfg = load_config(None, [
        "train.epochs=5",                 # int
        "train.learning_rate=1e-4",       # float written without a dot
        "train.warmup_ratio=0",           # int coerced to float
        "train.jit_compile=true",         # bool
        "model.pooling=mean",             # bare string
        "model.init=null",                # optional -> None
        "train.clip_norm=null",
        "data.text=[a.txt, b.txt]",       # list[str]
        "distill.layer_map=[1, 3]",       # list[int]
        "data.max_rows=100",              # int | None
        "task=pretrain",                  # top-level key
        "out=runs/x",
        "serve.max_wait_ms=2.5",
    ])
    assert cfg.train.epochs == 5
    assert cfg.train.learning_rate == pytest.approx(1e-4)
    assert cfg.train.warmup_ratio == 0.0 and isinstance(cfg.train.warmup_ratio, float)
    assert cfg.train.jit_compile is True
    assert cfg.model.pooling == "mean"
    assert cfg.model.init is None and cfg.train.clip_norm is None
    assert cfg.data.text == ["a.txt", "b.txt"]
    assert cfg.distill.layer_map == [1, 3]
    assert cfg.data.max_rows == 100
    assert (cfg.task, cfg.out, cfg.serve.max_wait_ms) == ("pretrain", "runs/x", 2.5)


def test_string_fields_keep_numeric_looking_text():
    cfg = load_config(None, ["model.init=123", "data.label=yes", "serve.name=1.0", "out=2024-01-01"])
    assert (cfg.model.init, cfg.data.label, cfg.serve.name, cfg.out) == ("123", "yes", "1.0", "2024-01-01")


def test_yaml12_scalars(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  labels: [yes, no]\n  label: on\ntrain:\n  learning_rate: 2e-5\n")
    cfg = load_config(f)
    assert cfg.data.labels == ["yes", "no"] and cfg.data.label == "on"
    assert cfg.train.learning_rate == pytest.approx(2e-5)
    with pytest.raises(ConfigError, match=r"train\.jit_compile: expected bool"):
        load_config(None, ["train.jit_compile=yes"])  # only true/false are booleans


def test_labels_coerced_to_strings(tmp_path):
    assert load_config(None, ["data.labels=[0, 1]"]).data.labels == ["0", "1"]
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  labels: [0, 1, 2]\n")
    assert load_config(f).data.labels == ["0", "1", "2"]


def test_file_then_overrides_and_last_wins():
    cfg = load_config(CONFIG_DIR / "finetune.yaml", ["train.epochs=7", "train.epochs=9"])
    assert cfg.train.epochs == 9
    assert cfg.train.max_seq_len == 64  # untouched file value survives


def test_base_then_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 4\n")
    cfg = load_config(f, base={"train": {"epochs": 1, "seed": 7}})
    assert (cfg.train.epochs, cfg.train.seed) == (4, 7)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),     # str for int
    ("train.epochs='3'", "train.epochs"),       # quoted number is a string
    ("train.epochs=3.5", "train.epochs"),       # float for int
    ("train.epochs=true", "train.epochs"),      # bool for int
    ("train.learning_rate=fast", "train.learning_rate"),
    ("train.jit_compile=1", "train.jit_compile"),  # int for bool
    ("train.batch_size=null", "train.batch_size"),  # null for non-optional (train.epochs may be null)
    ("data.text=a.txt", "data.text"),           # scalar for list
    ("distill.layer_map=[1, x]", "distill.layer_map"),
    ("model.init=[a, b]", "model.init"),
])
def test_wrong_type(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_wrong_type_message():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.batch_size=three"])
    assert str(e.value) == "train.batch_size: expected int, got 'three'"


def test_unknown_key_did_you_mean():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epoch=3"])
    assert str(e.value) == "unknown key 'train.epoch' (did you mean 'train.epochs'?)"
    with pytest.raises(ConfigError, match=r"unknown key 'epochs' \(did you mean 'train.epochs'\?\)"):
        load_config(None, ["epochs=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'train\.zzz'$"):
        load_config(None, ["train.zzz=1"])


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section 'trian' \(did you mean 'train'\?\)"):
        load_config(None, ["trian.epochs=3"])
    f = tmp_path / "c.yaml"
    f.write_text("modle:\n  pooling: mean\n")
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        load_config(f)


def test_unknown_key_in_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  poolng: mean\n")
    with pytest.raises(ConfigError, match=r"model\.poolng.*model\.pooling"):
        load_config(f)


CHOICES = {k: f.metadata["choices"] for k, f in schema_fields().items() if "choices" in f.metadata}


def test_choices_are_declared_on_their_fields():
    assert len(CHOICES) == 18 and CHOICES["model.pooling"] == CHOICES["sbert.pooling"] == ("cls", "mean", "max")
    assert CHOICES["train.mixed_precision"] == ("mixed_bfloat16", "mixed_float16")
    assert CHOICES["virt.positions"] == ("all", "content") and CHOICES["virt.weight_schedule"] == ("constant", "decay")
    assert schema_fields()["virt.layers"].metadata["pattern"][1] == "all|first-k|last-k|skip-k"


def test_random_init_depth_is_a_schema_value():
    """`model.num_layers: null` with `model.init: null` builds model.random_num_layers layers (4, as before)."""
    assert RunConfig().model.random_num_layers == 4
    assert load_config(None, ["model.init=null", "model.random_num_layers=2"]).model.random_num_layers == 2
    with pytest.raises(ConfigError, match=r"model\.random_num_layers: must be >= 1, got 0"):
        load_config(None, ["model.random_num_layers=0"])


@pytest.mark.parametrize("key, choices", sorted(CHOICES.items()))
def test_bad_choice(key, choices):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}=bogus"])
    assert key in str(e.value) and "|".join(choices) in str(e.value)


@pytest.mark.parametrize("layers", ["all", "first-2", "last-1", "skip-3"])
def test_virt_layers_pattern_ok(layers):
    assert load_config(None, [f"virt.layers={layers}"]).virt.layers == layers


@pytest.mark.parametrize("layers", ["some", "last", "last-x", "middle-2"])
def test_virt_layers_pattern_bad(layers):
    with pytest.raises(ConfigError, match=r"virt\.layers"):
        load_config(None, [f"virt.layers={layers}"])


def test_null_for_optional_choice():
    cfg = load_config(None, ["train.mixed_precision=mixed_bfloat16", "train.mixed_precision=null"])
    assert cfg.train.mixed_precision is None


@pytest.mark.parametrize("bad", ["train.epochs=", "train.epochs", "=3", "a.b.c=1", ".x=1"])
def test_malformed_overrides(bad):
    with pytest.raises(ConfigError):
        load_config(None, [bad])


def test_missing_value_names_key():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(None, ["train.epochs="])


def test_missing_file_and_bad_yaml(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(top)


def test_section_must_be_mapping(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train"):
        load_config(f)
    f.write_text("train:\n")  # empty section = defaults
    assert load_config(f).train == RunConfig().train


def test_round_trip(tmp_path):
    cfg = load_config(CONFIG_DIR / "pretrain.yaml", [
        "data.labels=[0, '1', yes_label]", "data.text=[a.txt]", "distill.layer_map=[0, 2]",
        "train.learning_rate=3e-5", "model.lowercase=false", "serve.name='123'",
        "out=runs/rt", "virt.layers=skip-2", "train.mixed_precision=mixed_float16"])
    path = tmp_path / "sub" / "saved.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_round_trip_every_yaml(path, tmp_path):
    cfg = load_config(path)
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_round_trip_defaults(tmp_path):
    save_config(RunConfig(), tmp_path / "d.yaml")
    assert load_config(tmp_path / "d.yaml") == RunConfig()


def test_parse_overrides_flattens():
    assert parse_overrides([["a.b=1", "c.d=2"], ["e.f=3"]]) == ["a.b=1", "c.d=2", "e.f=3"]
    assert parse_overrides(["a.b=1", "c.d=2"]) == ["a.b=1", "c.d=2"]
    assert parse_overrides(None) == [] and parse_overrides([]) == []


def test_parse_overrides_with_argparse():
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--set", action="append", nargs="+", default=[])
    args = p.parse_args(["--set", "train.epochs=1", "model.pooling=max", "--set", "train.epochs=4"])
    cfg = load_config(None, parse_overrides(args.set))
    assert (cfg.train.epochs, cfg.model.pooling) == (4, "max")


@pytest.mark.parametrize("text", ["train: epochs=7\n", "train: [3]\n", "train: 3\n"])
def test_a_malformed_section_is_refused_even_when_set_overrides_its_keys(tmp_path, text):
    """A mapping merged later (--set train.*) used to replace the malformed section without a word:
    each source's sections are checked on their own, naming the file (or --set item) and the section."""
    f = tmp_path / "c.yaml"
    f.write_text(text)
    for overrides in ([], ["train.epochs=3"], ["train.learning_rate=1e-4"]):
        with pytest.raises(ConfigError) as e:
            load_config(f, overrides)
        assert str(e.value).startswith(f"{f}: section 'train' must be a mapping of keys"), e.value
    with pytest.raises(ConfigError, match=r"^--set train=5: section 'train' must be a mapping"):
        load_config(None, ["train=5", "train.epochs=3"])


def test_a_binary_config_file_is_refused_naming_it(tmp_path):
    f = tmp_path / "model.weights.h5"
    f.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: not a UTF-8 text file (byte 0x89 at offset 0); --config takes a YAML file"
