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

# The slowest files (their module fixtures train or export models), slowest first. `make test` runs
# `-n 2 --dist loadfile --no-loadscope-reorder`: whole files go to the two workers in collection order
# (xdist's default order, most tests first, put the slow files with few tests last, where one of
# them ran alone for a minute or two while the other worker idled).
SLOW_FIRST = ("test_export.py", "test_tradeoff.py", "test_quickstart.py", "test_multiworker.py", "test_virt.py",
              "test_serve.py", "test_distill.py", "test_export_fused.py", "test_hardening.py")


def pytest_collection_modifyitems(config, items):
    """Slow files first (the same order on every worker: xdist requires identical collections)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


@pytest.fixture(scope="session")
def minilm_checkpoint():
    """`read_checkpoint("minilm")` -> (encoder, tokenizer, report), built once per session (~5 s)."""
    from modeling.pretrained import read_checkpoint

    return read_checkpoint("minilm")
