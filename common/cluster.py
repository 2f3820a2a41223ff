"""Which process of a multi-worker run is the chief: the one that writes the run directory.

One rule, TensorFlow's: the task of type `chief`, or worker 0 of a cluster that has no `chief` task;
a process outside any cluster is its own chief. It is decided before TensorFlow starts, from
TF_CONFIG (`chief_from_env`: the run directory, its lock and config are the chief's), and again from
the strategy's cluster resolver once it exists (training.strategy.is_chief); both apply `chief_task`.
"""

from __future__ import annotations

import json
import os


def chief_task(task_type, task_id, cluster):
    """Whether task `task_type`/`task_id` of `cluster` ({type: [addresses]}) is the chief."""
    return task_type is None or task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster)


def tf_config(environ=None):
    """TF_CONFIG as a dict, or None when it is not set."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    return None if raw is None else json.loads(raw)


def chief_from_env(strategy, environ=None):
    """Whether this process is the chief of a run with `train.strategy` = `strategy`: always, unless
    the strategy is `multiworker` and TF_CONFIG names a task that is not the chief."""
    config = tf_config(environ) if strategy == "multiworker" else None
    if config is None:
        return True
    task = config.get("task", {})
    return chief_task(task.get("type"), task.get("index", 0), config.get("cluster", {}))
