"""Optimisers and learning-rate schedules from optax, as the paper and its baselines use them."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from block_recurrent.configs import TrainConfig
from block_recurrent.train import adafactor


def schedule(cfg: TrainConfig) -> optax.Schedule:
  """Warmup then decay. 'rsqrt' is the paper's: base * min(1, t/warmup) / sqrt(max(t, warmup))."""
  warmup = max(cfg.warmup_steps, 1)
  base = cfg.learning_rate

  def fn(step):
    t = jnp.asarray(step, jnp.float32) + 1.0
    ramp = jnp.minimum(1.0, t / warmup)
    if cfg.schedule == 'rsqrt':
      return base * ramp / jnp.sqrt(jnp.maximum(t, warmup))
    progress = jnp.clip((t - warmup) / max(cfg.num_steps - warmup, 1), 0.0, 1.0)
    if cfg.schedule == 'cosine':
      return base * ramp * (0.1 + 0.9 * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))  # down to 10%
    if cfg.schedule == 'linear':
      return base * ramp * (1.0 - progress)
    return base * ramp

  return fn


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  lr = schedule(cfg)
  if cfg.optimizer == 'adafactor':
    opt = adafactor.adafactor(lr, decay_rate=0.8, momentum=0.9,
                              clipping_threshold=cfg.adafactor_clipping or None)
  else:
    opt = optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=cfg.weight_decay)
  # Always chained, at an infinite norm when clipping is off (updates pass unchanged, bitwise): the
  # optimiser state has one structure either way, so a run can be resumed with clipping turned on.
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip if cfg.grad_clip > 0 else float('inf')), opt)
