"""Issue 27, the hostile-user campaign from scratch (docs/testing.md#hostile-input-campaign): each test is a bad
input the campaign found answered badly (accepted without a word, a traceback, a wrong result) or vaguely.
Cheap: the config cases need no TensorFlow; the others reuse tests/test_reliability.py's tiny model."""

from __future__ import annotations

import pytest

from config import ConfigError, load_config


def test_a_duplicate_key_in_a_config_file_is_refused_naming_file_and_line(tmp_path):
    # YAML keeps the last of two equal keys: 'epochs: 3' was dropped without a word
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"dup.yaml:4: duplicate key 'epochs' in section 'train' \(first at line 2\)"):
        load_config(path)
    path.write_text("train:\n  epochs: 3\ntrain:\n  batch_size: 8\n")  # a section twice: its first keys were lost
    with pytest.raises(ConfigError, match=r"dup.yaml:3: duplicate key 'train' \(first at line 1\)"):
        load_config(path)


@pytest.mark.parametrize("override,message", [
    ("data.labels=[]", "data.labels: an empty list; give the class names in order, or null"),
    ("data.labels=[a, b, a]", "data.labels: 'a' is given twice in ['a', 'b', 'a']"),
    ("data.labels=[0, '0']", "data.labels: '0' is given twice in ['0', '0']"),
    ("serve.warmup=[32, -1]", "serve.warmup: sequence lengths must be >= 1, got -1 in [32, -1]"),
    ("serve.warmup=[0]", "serve.warmup: sequence lengths must be >= 1, got 0 in [0]"),
])
def test_list_values_that_cannot_mean_anything_are_refused_when_the_config_is_resolved(override, message):
    # evaluate, predict and serve ignored them (evaluate: the model's labels; serve: lengths clamped to 1)
    with pytest.raises(ConfigError) as e:
        load_config(None, [override, "task=evaluate"])
    assert str(e.value) == message
