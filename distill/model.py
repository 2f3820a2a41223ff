"""Training-time wrapper: a cross-encoder student learning from a cross-encoder teacher.

Teacher logits come either from the batch (`teacher_logits`, cached once over
the training set: the teacher is not in memory while the student trains) or
from the teacher run in the step (`online`, needed with on-the-fly augmentation
and for hidden-state distillation).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from distill.losses import hidden_mse, kd_terms
from modeling.task_model import StudentTraining, resolve_layer_map


class DistillTraining(StudentTraining):
    """`w * CE + (1 - w) * T^2 * KL` (+ optional hidden-state MSE) for a CrossEncoder student, w = label_weight.

    Args:
        student: the `CrossEncoder` being trained (what is saved).
        teacher: a frozen `CrossEncoder` for online distillation, or None when
            batches carry cached `teacher_logits`.
        label_weight: weight w of the hard-label cross-entropy (`distill.label_weight`, the `alpha`
            of `distill.losses`); 1 - w weighs the soft targets.
        temperature: softmax temperature T of the soft targets.
        intermediate: also match hidden states of mapped layers through a learned
            projection (student width -> teacher width); needs the online teacher.
        layer_map: teacher layer (1-based over hidden_states, i.e. the output of
            layer i) for each student layer; None = uniform.
        intermediate_weight: weight of the hidden-state term.
    """

    def __init__(self, student, teacher=None, label_weight=0.2, temperature=10.0, intermediate=False,
                 layer_map=None, intermediate_weight=1.0, **kwargs):
        super().__init__(student, **kwargs)
        self.teacher = teacher
        self.label_weight, self.temperature = float(label_weight), float(temperature)
        self.intermediate = intermediate
        self.intermediate_weight = intermediate_weight
        if teacher is not None:
            teacher.trainable = False
        if intermediate:
            if teacher is None:
                raise ValueError("distill.intermediate needs the teacher in the step (distill.online=true)")
            ns, nt = student.encoder.num_layers, teacher.encoder.num_layers
            self.layer_map = resolve_layer_map(layer_map, ns, nt, "distill.layer_map")
            self.projection = keras.layers.Dense(teacher.encoder.hidden_size, name="hidden_projection")
            self.projection.build((None, None, student.encoder.hidden_size))  # before the optimizer is built

    def call(self, inputs, training=False):
        if not training:
            return self.student(inputs, training=False)
        logits, out = self.student.forward(inputs, training=True, output_hidden_states=self.intermediate)
        result = {"logits": logits}
        if self.teacher is not None:
            t_logits, t_out = self.teacher.forward(inputs, training=False, output_hidden_states=self.intermediate)
            result["teacher_logits"] = tf.stop_gradient(t_logits)
            if self.intermediate:
                terms = [hidden_mse(self.projection(out["hidden_states"][l + 1]),
                                    tf.stop_gradient(t_out["hidden_states"][t + 1]), inputs["attention_mask"])
                         for l, t in enumerate(self.layer_map)]
                result["hidden"] = tf.add_n(terms) / len(terms)
        return result

    def loss_terms(self, x, y, y_pred):
        teacher_logits = y_pred.get("teacher_logits", x.get("teacher_logits"))
        terms = kd_terms(y, y_pred["logits"], teacher_logits, self.label_weight, self.temperature, x.get("hard_weight"))
        if "hidden" in y_pred:
            terms["hidden"] = self.intermediate_weight * y_pred["hidden"]
        return terms

