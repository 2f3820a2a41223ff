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
    """AdamW fed gradients that the training step already summed over replicas,
    with an optional learning-rate factor for some variables.

    Keras clips before its own all-reduce, i.e. on each replica's share, which
    would make `clip_norm` R times looser on R GPUs. The trainer all-reduces
    first, so clipping sees the global norm, and this class skips the second sum.

    `scale_learning_rate(variables, factor)` (after `build`) multiplies the
    Adam step of those variables; decoupled weight decay keeps the base rate.
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars

    def scale_learning_rate(self, variables, factor):
        # Keyed by the optimizer's own variable index, which also resolves the
        # per-device components a distributed update passes to `update_step`.
        factors = self.__dict__.setdefault("_lr_factors", {})
        for v in variables:
            factors[self._get_variable_index(v)] = float(factor)

    def update_step(self, gradient, variable, learning_rate):
        factor = self.__dict__.get("_lr_factors", {}).get(self._get_variable_index(variable), 1.0)
        if factor != 1.0:
            learning_rate = learning_rate * factor
        super().update_step(gradient, variable, learning_rate)


def head_variables(model):
    """Trainable variables outside the (pretrained) encoder: the randomly initialised heads."""
    encoder = getattr(getattr(model, "deployable", model), "encoder", None)
    if encoder is None:
        return []
    in_encoder = {id(v) for v in encoder.trainable_variables}
    return [v for v in model.trainable_variables if id(v) not in in_encoder]


def build_optimizer(train_cfg, total_steps, model=None):
    """AdamW on the warm-up/decay schedule; given `model`, built on its variables,
    with its head's rate scaled by `train.head_lr_multiplier`."""
    schedule = WarmupLinearDecay(train_cfg.learning_rate, total_steps,
                                 round(train_cfg.warmup_ratio * total_steps))
    opt = ReducedAdamW(learning_rate=schedule, weight_decay=train_cfg.weight_decay,
                       beta_1=0.9, beta_2=0.999, epsilon=1e-6, global_clipnorm=train_cfg.clip_norm)
    # BERT practice: no weight decay on biases and LayerNorm parameters.
    opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    adamw = opt
    if train_cfg.mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    if model is not None:
        opt.build(model.trainable_variables)  # builds the inner AdamW too, once
        if train_cfg.head_lr_multiplier != 1.0:
            adamw.scale_learning_rate(head_variables(model), train_cfg.head_lr_multiplier)
    return opt
