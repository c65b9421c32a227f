"""Training: synthetic corpora, the CTC training loop, Ray Train jobs (pretrain, adapt, evaluate)."""
