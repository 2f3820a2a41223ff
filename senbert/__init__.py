"""Sentence-BERT (SBERT, Reimers & Gurevych 2019): the siamese bi-encoder method.

One method, one name per place it shows, each for a reason:

- `SentenceBert` (senbert/model.py): the model class, the method's full name;
- `sbert`: what users type and what model directories record, kept as it is -- the task
  (`--task sbert`, config/sbert.yaml), the config section (`sbert.objective`, ...) and the
  model kind in model.json (`"kind": "sbert"`), which old model directories must keep loading;
- `senbert/`: this package, the name the product's required top-level layout gives it.

The `embed` task (texts -> embeddings with a trained `sbert` model) lives here too.
"""
