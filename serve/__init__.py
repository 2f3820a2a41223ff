"""HTTP model server speaking TensorFlow Serving's REST API, with dynamic micro-batching.

    python run_tasks.py --task serve --set serve.model=<export dir or model dir>

Modules: `signatures` (TF Serving request/response shapes), `metrics` (Prometheus text),
`app` (FastAPI routes), `task` (the serve task). The backends and the micro-batcher are
the inference runtime's (runtime/).
"""
