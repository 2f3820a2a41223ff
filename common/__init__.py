"""The lowest layer: what every package would otherwise write for itself (standard library, numpy and
YAML only, no TensorFlow: the serving runtime imports it).

- `common.files`: atomic writes of files and directories;
- `common.cache`: the content-hash disk cache (tokenisation, teacher logits);
- `common.cluster`: which process of a multi-worker run is the chief;
- `common.labels`: what a label set means (the positive class, cosine targets, graded scales).
"""
