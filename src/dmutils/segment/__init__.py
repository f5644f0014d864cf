"""Segmenters: dataset readers, training, evaluation, noise learning, self-training."""
