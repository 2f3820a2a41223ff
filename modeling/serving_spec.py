"""What the inference runtime needs of a model kind, as plain data: no Keras, no TensorFlow.

A kind's model class (modeling.task_model.PairModel) is the authority: `spec_of(cls, config)`
reads its attributes. The export writes that spec into the export directory (`serving.json`),
so a server of an ONNX export reads it from there and never imports the model classes, which
import Keras (a serving environment has only onnxruntime, tokenizers, numpy and the server:
requirements-serve.txt).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

# predict_ids' inputs (and the ONNX input names): a jointly tokenised pair, or two texts tokenised alone.
PAIR_IDS = ("input_ids", "token_type_ids", "attention_mask")
SIAMESE_IDS = ("x_ids", "x_mask", "y_ids", "y_mask")

SPEC_FILE = "serving.json"
FORMAT = "textmatch-serving-spec"


class SpecError(ValueError):
    """A serving.json that cannot be read; the message names the file."""


@dataclass(frozen=True)
class ServingSpec:
    """The model class's serving attributes (their meaning: modeling/task_model.py), with
    predict_ids' output names resolved for one model's config."""
    kind: str
    servable: bool
    ids_inputs: tuple
    encode_output: str | None
    late_interaction: bool
    reranks: bool
    threshold_metric: str | None
    outputs: tuple  # predict_ids' outputs

    def joint_pair(self):
        """Whether a pair is one input ([CLS] a [SEP] b [SEP]) rather than two texts encoded alone."""
        return tuple(self.ids_inputs) == PAIR_IDS

    def to_json(self):
        return {"format": FORMAT, **asdict(self)}


def spec_of(model_class, config):
    """The spec of a registered model class for a model of Keras config `config` (model.json's)."""
    return ServingSpec(kind=model_class.kind, servable=bool(model_class.servable),
                       ids_inputs=tuple(model_class.ids_inputs), encode_output=model_class.encode_output,
                       late_interaction=bool(model_class.late_interaction), reranks=bool(model_class.reranks),
                       threshold_metric=model_class.threshold_metric,
                       outputs=tuple(model_class.predict_outputs(config)))


def write_spec(spec, directory):
    path = Path(directory) / SPEC_FILE
    path.write_text(json.dumps(spec.to_json(), indent=2) + "\n", encoding="utf-8")
    return path


def read_spec(directory):
    """The spec an export wrote into `directory`, or None when it wrote none (an export made before
    serving.json existed: the caller falls back to the model class)."""
    path = Path(directory) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.pop("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
        data["ids_inputs"], data["outputs"] = tuple(data["ids_inputs"]), tuple(data["outputs"])
        return ServingSpec(**data)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SpecError(f"{path}: not a serving spec written by the export ({e}); export the model again") from None
