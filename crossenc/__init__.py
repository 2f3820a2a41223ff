"""The cross-encoder (interaction model): its Keras model (`crossenc.model`) and its tasks
(`crossenc.task`: finetune, evaluate, predict), and what distillation needs from it as a teacher
(`crossenc.teacher`)."""
