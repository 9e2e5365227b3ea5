"""ReLiT, AReLiT and GTrXL: step == sequence (every gating and mode; GTrXL with the step mask), chunked ==
sequential for separable ReLiT, a reset isolates everything before it, and AReLiT's fixed-mode counter
is exact after 10^7 steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from block_recurrent.model import gtrxl, linear_recurrent as linrec
import helpers

B, T, D, H, DH = 2, 21, 16, 2, 4


def _x(seed, length=T):
  return jax.random.normal(jax.random.key(seed), (B, length, D), jnp.float32)


def _resets(length=T):
  r = np.zeros((B, length), bool)
  r[0, 0] = r[1, 0] = True
  r[0, 7] = True  # row 0 starts a new episode mid-sequence (inside the first chunk of 16)
  r[1, 18] = True  # row 1 inside the second chunk
  return r


LAYERS = {
    'relit_separable': lambda: linrec.ReLiT(D, H, DH, 2, nnx.Rngs(0), gating='separable', chunk=8),
    'relit_reference': lambda: linrec.ReLiT(D, H, DH, 2, nnx.Rngs(0), gating='reference'),
    'arelit_fixed': lambda: linrec.AReLiT(D, H, DH, 3, 2, nnx.Rngs(0), mode='fixed'),
    'arelit_faithful': lambda: linrec.AReLiT(D, H, DH, 3, 2, nnx.Rngs(0), mode='faithful'),
    'arelit_gate_bias': lambda: linrec.AReLiT(D, H, DH, 3, 2, nnx.Rngs(0), mode='fixed', gate_bias=-3.0),
    'gtrxl_step_mask': lambda: _Formless(gtrxl.GTrXLAttention(D, H, DH, 6, nnx.Rngs(0), mask='step')),
}


class _Formless(nnx.Module):
  """GTrXL has one form (the mask makes a segment see what steps see); accept and ignore `form`."""

  def __init__(self, layer):
    self.layer = layer

  def init_state(self, batch):
    return self.layer.init_state(batch)

  def __call__(self, x, state, reset, form=None):
    return self.layer(x, state, reset)


def _warm_state(layer):
  """A state with something in it: the layer run over other inputs first."""
  _, state = layer(_x(9, 5), layer.init_state(B), np.zeros((B, 5), bool))
  return state


@pytest.mark.parametrize('name', list(LAYERS))
def test_step_form_equals_sequence_form(name):
  layer = LAYERS[name]()
  graphdef, params = nnx.split(layer)
  state0, x, reset = _warm_state(layer), _x(1), _resets()
  seq_y, seq_state = jax.jit(lambda p, x, s, r: nnx.merge(graphdef, p)(x, s, r))(params, x, state0, reset)
  one_step = jax.jit(lambda p, x, s, r: nnx.merge(graphdef, p)(x, s, r, form='step'))
  st, ys = state0, []
  for t in range(T):  # T=1 calls: the actor / decoding form
    y, st = one_step(params, x[:, t:t + 1], st, reset[:, t:t + 1])
    ys.append(y)
  helpers.assert_close(seq_y, jnp.concatenate(ys, axis=1), 1e-5, f'{name}: outputs')
  helpers.assert_close(seq_state, st, 1e-5, f'{name}: final state')


def test_chunked_equals_sequential_for_separable_relit_values_and_gradients():
  layer = LAYERS['relit_separable']()
  graphdef, params = nnx.split(layer)
  state0, x, reset = _warm_state(layer), _x(2), _resets()

  def loss(params, form):
    y, st = nnx.merge(graphdef, params)(x, state0, reset, form=form)
    return jnp.sum(jnp.sin(y)) + jnp.sum(st.C), (y, st)

  (l1, (y1, s1)), g1 = jax.value_and_grad(loss, has_aux=True)(params, 'chunked')
  (l2, (y2, s2)), g2 = jax.value_and_grad(loss, has_aux=True)(params, 'step')
  helpers.assert_close(y1, y2, 1e-5, 'chunked vs sequential outputs')
  helpers.assert_close(s1, s2, 1e-5, 'chunked vs sequential state')
  helpers.assert_close(g1, g2, 1e-4, 'chunked vs sequential gradients')
  assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g1)) > 1e-3


@pytest.mark.parametrize('name', list(LAYERS))
def test_reset_isolates_everything_before_it(name):
  layer = LAYERS[name]()
  graphdef, params = nnx.split(layer)
  apply = jax.jit(lambda p, x, s, r: nnx.merge(graphdef, p)(x, s, r)[0])
  reset = _resets()
  x = _x(3)
  y = apply(params, x, _warm_state(layer), reset)
  other = x.at[:, :7].set(_x(4)[:, :7])  # different inputs before row 0's reset at 7
  y2 = apply(params, other, layer.init_state(B), reset)  # and a different incoming state
  helpers.assert_close(y[0, 7:], y2[0, 7:], 1e-6, f'{name}: row 0 after its reset')
  assert float(jnp.max(jnp.abs(y[0, :7] - y2[0, :7]))) > 1e-4  # before it, the inputs did matter


def test_arelit_fixed_counter_is_exact_after_ten_million_steps():
  layer = LAYERS['arelit_fixed']()
  steps = 10 ** 7
  tau = jax.jit(lambda t0: jax.lax.fori_loop(
      0, steps, lambda _, t: layer.times(t, jnp.zeros((1, 1), bool))[:, 0], t0))(jnp.zeros((1,), jnp.int32))
  assert int(tau[0]) == steps % layer.period
  exact = np.cos(np.float64(steps) * 2 * np.pi * np.arange(1, layer.rank + 1) / layer.period)
  np.testing.assert_allclose(np.asarray(layer.cosines(tau[:, None]))[0, 0], exact, atol=1e-6)
  # The reference's float32 counter gives the same count here, but its angle w * tau does not survive:
  faithful = LAYERS['arelit_faithful']()
  far = faithful.cosines(jnp.full((1, 1), steps, jnp.float32))[0, 0]
  exact_faithful = np.cos(np.float64(steps) * np.linspace(-np.pi, np.pi, faithful.rank))
  assert np.max(np.abs(np.asarray(far) - exact_faithful)) > 1e-3
  assert len(set(np.round(np.abs(faithful.omegas()), 6))) == 1  # r=2: +-pi, one frequency in effect
  assert len(set(np.round(layer.omegas(), 6))) == layer.rank


def test_gated_block_starts_near_identity_and_keeps_the_contract():
  block = linrec.GatedBlock(LAYERS['arelit_fixed'](), D, 32, nnx.Rngs(1))
  x = _x(5)
  y, state = block(x, block.init_state(B), _resets())
  assert y.shape == x.shape and state.K.shape == (B, H, 2, 3 * DH)
  z = jax.nn.sigmoid(-2.0)  # the gates' bias of 2 lets ~12% of the sublayer through at initialisation
  assert float(jnp.mean(jnp.abs(y - x))) < 0.5 * float(jnp.mean(jnp.abs(x))) and z < 0.2
  assert linrec.state_bytes(state) == B * H * (2 * 3 * DH + 2 * DH + 3 * DH) * 4 + B * 4


def test_step_costs_count_state_bytes_exactly_and_grow_with_gtrxl_memory():
  from block_recurrent.model import costs
  size = dict(d_model=32, num_heads=2, head_dim=16, num_layers=2)  # F = eta * 16
  arelit = costs.step_cost('arelit', eta=4, rank=2, **size)
  assert arelit['state_bytes'] == 2 * (2 * 2 * 64 + 2 * 2 * 16 + 2 * 64) * 4 + 2 * 4  # K~, V~, s, tau
  relit = costs.step_cost('relit', eta=2, **size)
  assert relit['state_bytes'] == 2 * (2 * 16 * 32 + 2 * 32) * 4  # C, s
  small, large = costs.step_cost('gtrxl', memory=16, **size), costs.step_cost('gtrxl', memory=64, **size)
  assert large['state_bytes'] == 2 * (2 * 64 * 2 * 16 * 4 + 64)  # keys, values, validity of M=64 tokens
  assert large['flops'] > small['flops'] > 0 and arelit['flops'] > 0


def test_gate_bias_starts_the_gates_nearly_shut_and_is_learned():
  plain = linrec.AReLiT(D, H, DH, 3, 2, nnx.Rngs(0))
  biased = linrec.AReLiT(D, H, DH, 3, 2, nnx.Rngs(0), gate_bias=-3.0)
  _, _, _, beta0, gamma0 = plain.features(_x(3))
  _, _, _, beta, gamma = biased.features(_x(3))
  assert float(beta0.mean()) > 0.3 and float(beta.mean()) < 0.1  # sigmoid(-3) = 0.047
  assert float(gamma.mean()) < 0.01 < float(gamma0.mean())  # a product of two gates
  params = nnx.state(biased, nnx.Param)
  graphdef = nnx.graphdef(biased)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(
      _x(4), biased.init_state(B), jnp.asarray(_resets()))[0] ** 2)))(params)
  assert float(jnp.abs(grads['features']['gate_bias'][...]).max()) > 0
