"""Equivalences of the whole model, for every variant the paper compares (tiny, float32, tol 1e-4).

One segment of 2N == two segments of N with the carry passed across; lax.scan == a Python loop over
blocks; start_of_sequence makes a row independent of its incoming carry; causality through gradients.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
import helpers

TOL = 1e-4


@functools.lru_cache(maxsize=None)
def compiled(name, **overrides):
  model = brt.build_model(config=helpers.config(name, **overrides), seed=1)
  params, apply, _ = brt.functional(model)
  return model, params, apply


def warm_carry(name, batch, seed=7):
  """A carry that has seen a random segment, so that 'independent of the carry' means something."""
  model, params, apply = compiled(name)
  n = model.config.segment_length
  _, carry = apply(params, helpers.tokens(seed, batch, n), model.init_carry(batch), np.ones(batch, bool))
  return carry


# Ablations that cut the flow between segments by design; each has its own test below.
SEGMENT_LOCAL = ('rec_clear_state', 'slide_no_xl_cache')


@pytest.mark.parametrize('name', [n for n in helpers.VARIANTS if n not in SEGMENT_LOCAL])
def test_two_segments_equal_one(name):
  model, params, apply = compiled(name)
  n = model.config.segment_length
  carry0 = warm_carry(name, 2)
  start = np.array([True, False])
  toks = helpers.tokens(1, 2, 2 * n)
  whole, carry_whole = apply(params, toks, carry0, start)
  first, carry = apply(params, toks[:, :n], carry0, start)
  second, carry_two = apply(params, toks[:, n:], carry, np.zeros(2, bool))
  helpers.assert_close(whole, jnp.concatenate([first, second], axis=1), TOL, f'{name} logits')
  helpers.assert_close(carry_whole, carry_two, TOL, f'{name} carry')
  assert np.all(np.isfinite(whole))


@pytest.mark.parametrize('name', [n for n in helpers.VARIANTS if n != 'feedback_fixed_skip'])
def test_segment_form_equals_block_form(name):
  """Layer-by-layer over the segment (default) == the whole stack block by block (step form)."""
  model, params, apply = compiled(name)
  _, _, block_apply = compiled(name, block_major=True)
  n = model.config.segment_length
  carry0, start = warm_carry(name, 2), np.array([False, True])
  toks = helpers.tokens(10, 2, n)
  helpers.assert_close(apply(params, toks, carry0, start), block_apply(params, toks, carry0, start), TOL, name)


def test_always_clear_state_ignores_carried_state():
  """The ablation restarts the state every segment (the XL cache still flows)."""
  model, params, apply = compiled('rec_clear_state')
  n = model.config.segment_length
  carry = warm_carry('rec_clear_state', 2)
  scrambled = carry._replace(states=tuple(s + 3.0 for s in carry.states))
  toks, start = helpers.tokens(11, 2, n), np.zeros(2, bool)
  helpers.assert_close(apply(params, toks, carry, start)[0], apply(params, toks, scrambled, start)[0], TOL,
                       'clear state')
  fresh, _ = apply(params, toks, model.init_carry(2), start)
  assert np.max(np.abs(np.asarray(fresh) - np.asarray(apply(params, toks, carry, start)[0]))) > 1e-3


def test_without_xl_cache_segments_are_independent():
  model, params, apply = compiled('slide_no_xl_cache')
  n = model.config.segment_length
  toks, start = helpers.tokens(12, 2, n), np.zeros(2, bool)
  helpers.assert_close(apply(params, toks, warm_carry('slide_no_xl_cache', 2), start)[0],
                       apply(params, toks, model.init_carry(2), start)[0], TOL, 'no xl cache')
  # ... while blocks inside the segment still see their predecessor.
  other = toks.copy()
  other[:, 0] = (other[:, 0] + 1) % 260
  moved = np.abs(np.asarray(apply(params, other, model.init_carry(2), start)[0]
                            - apply(params, toks, model.init_carry(2), start)[0]))
  assert moved[:, model.config.window:].max() > 1e-3


@pytest.mark.parametrize('name', ['slide', 'rec_fixed_skip', 'rec_lstm_dual', 'feedback_fixed_skip',
                                  'rec_two_layers'])
def test_scan_equals_unrolled_loop(name):  # (feedback runs block-major, so both block runners are covered)
  model, params, apply = compiled(name)
  loop_model, _, loop_apply = compiled(name, unroll=True)
  n = model.config.segment_length
  carry0, start = warm_carry(name, 2), np.array([False, True])
  toks = helpers.tokens(2, 2, n)
  scanned = apply(params, toks, carry0, start)
  looped = loop_apply(params, toks, carry0, start)  # same parameter tree, different block runner
  helpers.assert_close(scanned, looped, TOL, name)


@pytest.mark.parametrize('name', list(helpers.VARIANTS))
def test_start_of_sequence_ignores_incoming_carry(name):
  model, params, apply = compiled(name)
  n = model.config.segment_length
  toks = helpers.tokens(3, 2, n)
  start = np.array([True, False])
  fresh, _ = apply(params, toks, model.init_carry(2), np.ones(2, bool))
  warm, _ = apply(params, toks, warm_carry(name, 2), start)
  helpers.assert_close(warm[0], fresh[0], TOL, f'{name} reset row')
  # The row that continues its document does see the previous segment (through the cache or state).
  if name in SEGMENT_LOCAL:
    return
  assert np.max(np.abs(np.asarray(warm[1]) - np.asarray(fresh[1]))) > 1e-3


@pytest.mark.parametrize('name', helpers.RECURRENT)
def test_state_changes_every_block(name):
  """Run one block per call: the carried state must move at every block boundary."""
  model, params, apply = compiled(name)
  w = model.config.window
  carry, start = model.init_carry(1), np.ones(1, bool)
  toks = helpers.tokens(4, 1, 4 * w)
  previous = None
  for t in range(4):
    _, carry = apply(params, toks[:, t * w:(t + 1) * w], carry, start)
    start = np.zeros(1, bool)
    states = np.concatenate([np.asarray(s).ravel() for s in carry.states])
    if previous is not None and not model.config.always_clear_state:
      assert np.max(np.abs(states - previous)) > 1e-4, f'state did not change at block {t}'
    previous = states


def test_state_moves_within_one_segment():
  """The state is updated once per block, not once per segment: 4 blocks != 3 blocks."""
  model, params, apply = compiled('rec_fixed_skip')
  w = model.config.window
  toks = helpers.tokens(5, 1, 4 * w)
  start = np.ones(1, bool)
  _, after3 = apply(params, toks[:, :3 * w], model.init_carry(1), start)
  _, after4 = apply(params, toks, model.init_carry(1), start)
  assert np.max(np.abs(np.asarray(after4.states[0]) - np.asarray(after3.states[0]))) > 1e-4


def _loss(model, x, carry, start, t):
  logits, _ = model.apply_embedded(x, carry, start)
  return jnp.sum(logits[:, t] * jnp.linspace(-1.0, 1.0, logits.shape[-1]))


@pytest.mark.parametrize('name', ['slide', 'xl', 'rec_fixed_skip', 'rec_lstm_single', 'feedback_fixed_skip'])
def test_causality_through_gradients(name):
  model, params, _ = compiled(name)
  graphdef, _ = nnx.split(model)
  n, d = model.config.segment_length, model.config.d_model
  x = jax.random.normal(jax.random.key(0), (1, n, d))
  carry, start = warm_carry(name, 1), np.zeros(1, bool)

  @jax.jit
  def grad_at(t):
    return jax.grad(lambda x: _loss(nnx.merge(graphdef, params), x, carry, start, t))(x)

  for t in sorted({0, model.config.window - 1, n // 2 + 1, n - 2} | ({model.config.window} if n > model.config.window else set())):
    g = np.abs(np.asarray(grad_at(t))).sum(-1)[0]
    assert np.all(g[t + 1:] == 0.0), f'{name}: loss at {t} has gradient to later inputs {np.nonzero(g[t+1:])}'
    assert g[t] > 0.0
    if t > 0:
      assert np.any(g[:t] > 0.0), f'{name}: loss at {t} sees no earlier input'


def test_recurrent_state_reaches_beyond_the_window():
  """Block 3 of a one-layer model sees block 0 only through the state, never through attention."""
  for name, expect in (('slide', False), ('rec_fixed_skip', True)):
    model = brt.build_model(config=helpers.config(name, num_layers=1, recurrent_layers=(0,) if expect
                                                  else ()), seed=0)
    w, d = model.config.window, model.config.d_model
    x = jax.random.normal(jax.random.key(1), (1, 4 * w, d))
    carry = model.init_carry(1)
    graphdef, params = nnx.split(model)
    g = jax.jit(jax.grad(lambda x: _loss(nnx.merge(graphdef, params), x, carry, np.ones(1, bool), 3 * w + 2)))(x)
    reached = float(np.abs(np.asarray(g[0, :w])).sum())
    assert (reached > 0.0) == expect, f'{name}: gradient into block 0 = {reached}'


@pytest.mark.parametrize('name', helpers.RECURRENT)
def test_every_state_parameter_gets_gradient(name):
  model, params, _ = compiled(name)
  graphdef, _ = nnx.split(model)
  n = model.config.segment_length
  toks = helpers.tokens(6, 2, n)
  carry = warm_carry(name, 2)
  start = np.array([True, False])

  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(toks, carry, start)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  grads = jax.jit(jax.grad(loss))(params)
  for index in model.config.recurrent_indices:
    flat = nnx.to_flat_state(grads['layers'][index]['state'])
    assert len(flat) >= 6
    for path, value in flat:
      norm = float(jnp.linalg.norm(value[...]))
      assert norm > 0.0, f'{name}: layer {index} state parameter {path} has zero gradient'
  # ... and every parameter of the model is used somewhere.
  for path, value in nnx.to_flat_state(grads):
    assert float(jnp.linalg.norm(value[...])) > 0.0, f'{name}: {path} has zero gradient'


def test_no_gradient_into_the_incoming_carry():
  """Truncated backpropagation: the cache and state passed in from the previous segment are constants."""
  model, params, _ = compiled('rec_fixed_skip')
  graphdef, _ = nnx.split(model)
  carry = warm_carry('rec_fixed_skip', 2)
  toks, start = helpers.tokens(13, 2, model.config.segment_length), np.zeros(2, bool)
  floats = lambda c: (c.keys, c.values, c.states)
  loss = lambda f: jnp.sum(nnx.merge(graphdef, params)(
      toks, carry._replace(keys=f[0], values=f[1], states=f[2]), start)[0] ** 2)
  grads = jax.jit(jax.grad(loss))(floats(carry))
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_bf16_runs_finite_with_f32_state():
  model, params, apply = compiled('rec_lstm_dual', dtype='bfloat16')
  n = model.config.segment_length
  carry = model.init_carry(2)
  for seed in range(3):
    logits, carry = apply(params, helpers.tokens(seed, 2, n), carry, np.array([seed == 0, False]))
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(logits)))
  assert all(s.dtype == jnp.float32 for s in carry.states)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_dropout_only_when_asked():
  model, params, apply = compiled('rec_fixed_skip')
  n = model.config.segment_length
  toks, carry, start = helpers.tokens(8, 2, n), model.init_carry(2), np.ones(2, bool)
  plain, _ = apply(params, toks, carry, start)
  drop1, _ = apply(params, toks, carry, start, jax.random.key(1))
  drop2, _ = apply(params, toks, carry, start, jax.random.key(2))
  assert np.max(np.abs(np.asarray(drop1) - np.asarray(plain))) > 1e-3
  assert np.max(np.abs(np.asarray(drop1) - np.asarray(drop2))) > 1e-3
  with pytest.raises(brt.ConfigError, match='dropout_key'):
    model(toks, carry, start, deterministic=False)


@pytest.mark.parametrize('block_major', [False, True])
def test_remat_matches_plain_gradients(block_major):
  model, params, _ = compiled('rec_fixed_skip')
  remat_model, _, _ = compiled('rec_fixed_skip', remat='full', block_major=block_major)
  n = model.config.segment_length
  toks, carry, start = helpers.tokens(9, 2, n), model.init_carry(2), np.ones(2, bool)

  def grads(m):
    graphdef, _ = nnx.split(m)
    return jax.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(toks, carry, start)[0] ** 2)))(params)

  helpers.assert_close(grads(model), grads(remat_model), 1e-5, 'remat gradients')
