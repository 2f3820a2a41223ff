"""AdamW with linear warm-up then linear decay, clipped on the global gradient norm."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="textmatch")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """0 -> `peak` over `warmup_steps`, then linearly to 0 at `total_steps`."""

    def __init__(self, peak, total_steps, warmup_steps):
        self.peak, self.total_steps, self.warmup_steps = float(peak), int(total_steps), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = step / self.warmup_steps if self.warmup_steps > 0 else 1.0
        decay = (self.total_steps - step) / max(self.total_steps - self.warmup_steps, 1)
        return self.peak * tf.maximum(0.0, tf.minimum(warm, decay))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


class ReducedAdamW(keras.optimizers.AdamW):
    """AdamW fed gradients that the training step already summed over replicas.

    Keras clips before its own all-reduce, i.e. on each replica's share, which
    would make `clip_norm` R times looser on R GPUs. The trainer all-reduces
    first, so clipping sees the global norm, and this class skips the second sum.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


def build_optimizer(train_cfg, total_steps):
    schedule = WarmupLinearDecay(train_cfg.learning_rate, total_steps,
                                 round(train_cfg.warmup_ratio * total_steps))
    opt = ReducedAdamW(learning_rate=schedule, weight_decay=train_cfg.weight_decay,
                       beta_1=0.9, beta_2=0.999, epsilon=1e-6, global_clipnorm=train_cfg.clip_norm)
    # BERT practice: no weight decay on biases and LayerNorm parameters.
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if train_cfg.mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
