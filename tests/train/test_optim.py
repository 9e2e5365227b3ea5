"""train/optim.py: the learning-rate schedules have the shapes their docstrings state, and the optimiser's
clipping is a no-op when off (so a run can be resumed with it on: one state structure either way)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from block_recurrent import configs
from block_recurrent.train import adafactor, optim


def _cfg(**kw):
  return configs.TrainConfig(**dict(dict(learning_rate=0.01, warmup_steps=10, num_steps=100), **kw))


def test_rsqrt_is_the_papers_warmup_then_inverse_square_root():
  lr = optim.schedule(_cfg(schedule='rsqrt'))
  for step in (0, 4, 9, 10, 50, 99):
    t = step + 1
    expected = 0.01 * min(1.0, t / 10) / math.sqrt(max(t, 10))
    assert float(lr(step)) == pytest.approx(expected, rel=1e-6), step


@pytest.mark.parametrize('kind, end', [('cosine', 0.1), ('linear', 0.0), ('constant', 1.0)])
def test_decays_ramp_up_then_reach_their_end_value(kind, end):
  lr = optim.schedule(_cfg(schedule=kind))
  ramp = [float(lr(s)) for s in range(10)]
  assert all(a < b for a, b in zip(ramp, ramp[1:])), ramp  # warmup rises
  assert float(lr(9)) == pytest.approx(0.01, rel=1e-6)  # full rate at the end of warmup
  assert float(lr(99)) == pytest.approx(0.01 * end, abs=1e-9)
  after = [float(lr(s)) for s in range(10, 100)]
  assert all(a >= b for a, b in zip(after, after[1:])), kind  # never rises after warmup


@pytest.mark.parametrize('name', ['adamw', 'adafactor'])
def test_clipping_off_passes_updates_unchanged_and_keeps_the_state_structure(name):
  params = {'w': jnp.arange(12.0).reshape(3, 4) / 7, 'b': jnp.ones(4)}
  grads = jax.tree.map(lambda p: 100.0 * jnp.cos(p), params)  # a large norm, which clipping would cut
  off, on = optim.optimizer(_cfg(optimizer=name, grad_clip=0.0)), optim.optimizer(_cfg(optimizer=name, grad_clip=1.0))
  state_off, state_on = off.init(params), on.init(params)
  assert jax.tree.structure(state_off) == jax.tree.structure(state_on)
  upd_off, _ = off.update(grads, state_off, params)
  clipped = on.update(grads, state_on, params)  # (updates, state): Adafactor's first update is scale-free
  cfg = _cfg(optimizer=name)
  bare = (optax.adamw(optim.schedule(cfg), b1=0.9, b2=0.98, weight_decay=cfg.weight_decay) if name == 'adamw' else
          adafactor.adafactor(optim.schedule(cfg), decay_rate=0.8, momentum=0.9,
                              clipping_threshold=cfg.adafactor_clipping or None))
  upd_bare, _ = bare.update(grads, bare.init(params), params)
  for a, b in zip(jax.tree.leaves(upd_off), jax.tree.leaves(upd_bare)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise: an infinite norm changes nothing
  unclipped = off.update(grads, state_off, params)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(unclipped), jax.tree.leaves(clipped)))
