"""Retrieval: `--task index` encodes candidates into an on-disk index, `--task search`
recalls by cosine (faiss or numpy) and optionally reranks (cross-encoder or VIRT's score).

Modules: `index` (index files, recall), `engine` (recall + rerank plan), `task` (the tasks).
"""
