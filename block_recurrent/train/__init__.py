"""Training: optimisers (optim.py), the pure train/eval steps (step.py), Orbax checkpoints
(checkpoint.py, the only Orbax import) and the flat loop that does all IO (loop.py)."""
