"""Encoder, checkpoint loaders, tokenizer and model directories.

The names below are imported on first use (PEP 562): importing a TF-free module of the package
(`modeling.tokenization`, `modeling.meta`) must not import Keras, so a server of an ONNX export
runs without TensorFlow installed.
"""

import importlib

_LAZY = {"BertEncoder": "modeling.encoder", "pool": "modeling.encoder",
         "load_pretrained": "modeling.pretrained", "PairTokenizer": "modeling.tokenization"}

__all__ = ["BertEncoder", "PairTokenizer", "load_pretrained", "pool"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'modeling' has no attribute {name!r}")
