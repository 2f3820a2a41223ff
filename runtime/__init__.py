"""Inference runtime: run a model's ids-level functions, whatever holds them.

Used by export's parity checks, search, serve and bench; imports nothing above modeling.

Modules: `backends` (onnxruntime / SavedModel / Keras behind one `Backend` interface,
`open_model`, `predict_pairs`), `batching` (rows, micro-batcher, plans), `rows` (texts ->
request rows as in training), `onnx` (an export's ONNX file names, onnxruntime sessions),
`logs` (rate-limited logging, the quiet start-up).
"""
