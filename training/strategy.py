"""Pick the tf.distribute strategy from `train.strategy` and `train.cpu_replicas`."""

from __future__ import annotations

import logging

import tensorflow as tf

from common.cluster import chief_task, tf_config

log = logging.getLogger(__name__)


def split_cpu(replicas):
    """Split the CPU into `replicas` logical devices (must run before TF touches devices)."""
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have < replicas:
            raise RuntimeError(f"train.cpu_replicas={replicas}, but TensorFlow was already initialised "
                               f"with {have} CPU device(s); set it before anything runs") from None


def make_strategy(train_cfg):
    """`auto`: MirroredStrategy over >1 GPU, else the default; `mirrored`; `multiworker`
    (cluster from TF_CONFIG); `one_device`. `cpu_replicas: N` mirrors over N CPU devices."""
    kind = train_cfg.strategy
    gpus = tf.config.list_physical_devices("GPU")
    if train_cfg.cpu_replicas and not gpus:
        split_cpu(train_cfg.cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][: train_cfg.cpu_replicas]
        if kind == "multiworker":
            return _multiworker()
        log.info("MirroredStrategy over %d logical CPU devices", len(devices))
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    if kind == "multiworker":
        return _multiworker()
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        log.info("MirroredStrategy over %d GPU(s)", len(gpus))
        return tf.distribute.MirroredStrategy()
    if kind == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def _multiworker():
    cluster = tf_config()
    if cluster is None:
        raise RuntimeError("train.strategy=multiworker needs the TF_CONFIG environment variable")
    log.info("MultiWorkerMirroredStrategy, task %s", cluster.get("task"))
    return tf.distribute.MultiWorkerMirroredStrategy()


def in_cluster(strategy=None):
    """True under a multi-worker strategy with a cluster (TF_CONFIG); default: the current strategy."""
    resolver = getattr(strategy or tf.distribute.get_strategy(), "cluster_resolver", None)
    return bool(resolver is not None and getattr(resolver, "cluster_spec", lambda: None)())


def is_chief(strategy):
    """Only the chief writes outputs; other workers write to throw-away dirs. The rule is
    common.cluster's; TensorFlow's part is reading the task from the strategy's resolver."""
    if not in_cluster(strategy):
        return True
    resolver = strategy.cluster_resolver
    return chief_task(resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict())
