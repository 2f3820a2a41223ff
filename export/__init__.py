"""Export a model directory for deployment: SavedModel (TF Serving), frozen .pb, ONNX, int8 ONNX.

    python run_tasks.py --task export --set export.model=<model dir> --out DIR
    python -m export.onnx <saved_model version dir> <out.onnx> [--signature predict_ids]

Modules: `task` (the run), `saved_model` (serving module and versions), `text`
(in-graph tokeniser), `frozen`, `onnx`, `hf` (the Hugging Face folder), `parity` (checks against Keras).
"""


class ExportError(RuntimeError):
    """An export cannot be made or failed a check; the message says which and why."""
