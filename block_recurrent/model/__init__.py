"""Flax NNX modules of the Block-Recurrent Transformer and its baselines."""
