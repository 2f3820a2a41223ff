"""Session-wide test setup.

Runs at import time, before any test module imports TensorFlow's devices:
- quieter TensorFlow C++ logs;
- the single physical CPU is split into 2 logical CPUs so that
  `tf.distribute.MirroredStrategy` (and the trainer's `cpu_replicas: 2` path)
  can run a real 2-replica program in tests.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# The logical-device layout can only be set before TensorFlow initialises its
# devices (the first op, tensor or device listing does that).  conftest.py is
# imported before any test module, so this normally succeeds; if some plugin
# already touched TF, it raises RuntimeError and tests that need 2 CPUs skip.
try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:
    pass


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def minilm_checkpoint():
    """`read_checkpoint("minilm")` -> (encoder, tokenizer, report), built once per session (~5 s)."""
    from modeling.pretrained import read_checkpoint

    return read_checkpoint("minilm")
