"""bfloat16 compute: every matmul, forward and backward, takes bfloat16 operands and accumulates in
float32, and kernels get float32 gradients (layers.product / mixed_einsum, attention's products)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
import helpers
from block_recurrent.model import attention, layers


@pytest.mark.parametrize('spec,x_shape,w_shape', [
    ('btd,df->btf', (2, 3, 8), (8, 5)),
    ('...d,dnhk->n...hk', (2, 3, 8), (8, 3, 2, 4)),
    ('btnhk,nhkd->btd', (2, 3, 2, 2, 4), (2, 2, 4, 8)),
])
def test_mixed_einsum_values_gradients_and_dtypes(spec, x_shape, w_shape):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape, jnp.float32)
  w = jax.random.normal(kw, w_shape, jnp.float32)
  out_shape = jax.eval_shape(lambda a, b: jnp.einsum(spec, a, b), x, w).shape
  g = jax.random.normal(kg, out_shape, jnp.float32)
  bf = lambda t: np.asarray(t.astype(jnp.bfloat16).astype(jnp.float32), np.float64)
  x16 = x.astype(jnp.bfloat16)  # an activation in the compute dtype; w is a float32 kernel

  y, vjp = jax.vjp(lambda a, b: layers.mixed_einsum(spec, jnp.bfloat16, a, b), x16, w)
  dx, dw = vjp(g)
  assert y.dtype == jnp.float32 and dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  # bfloat16 operands, float32 accumulation: the exact products of the rounded values, to float32 precision.
  ref = spec.replace('...', 'ab')  # numpy cannot sum over an ellipsis
  np.testing.assert_allclose(np.asarray(y), np.einsum(ref, bf(x), bf(w)), rtol=1e-5, atol=1e-5)
  inputs, out = ref.split('->')
  xs, ws = inputs.split(',')
  np.testing.assert_allclose(np.asarray(dw), np.einsum(f'{xs},{out}->{ws}', bf(x), bf(g)), rtol=1e-5, atol=1e-5)
  want_dx = np.einsum(f'{out},{ws}->{xs}', bf(g), bf(w))
  np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, rtol=1e-2, atol=1e-2)  # rounded to bfloat16


def _dot_generals(jaxpr, found):
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.append(eqn)
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          _dot_generals(inner, found)
  return found


def test_bf16_training_gradient_runs_every_activation_matmul_in_bf16():
  """In the gradient of a bfloat16 recurrent model (both gates' and the state's matmuls included), the
  only float32 matmuls are on parameters alone: the ones-vector sums of broadcast parameters'
  gradients and the T5 bias built from its one-hot constant."""
  cfg = helpers.config('rec_lstm_dual', dtype='bfloat16', dropout_rate=0.0)
  model = brt.build_model(config=cfg, seed=1)
  graphdef, params = nnx.split(model)
  toks, carry, start = helpers.tokens(0, 2, cfg.segment_length), model.init_carry(2), np.ones(2, bool)
  loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(toks, carry, start)[0] ** 2)
  dots = _dot_generals(jax.make_jaxpr(jax.grad(loss))(params).jaxpr, [])
  one_hot = attention.relative_one_hot(cfg.window, cfg.relative_buckets, cfg.relative_max_distance).shape
  low = [e for e in dots if all(v.aval.dtype == jnp.bfloat16 for v in e.invars)]
  assert len(low) > 50
  for eqn in low:
    assert eqn.params['preferred_element_type'] == jnp.float32, eqn
  for eqn in dots:
    if eqn in low:
      continue
    shapes = [tuple(v.aval.shape) for v in eqn.invars]
    assert len(shapes[0]) == 1 or one_hot in shapes, f'a float32 matmul on activations: {eqn}'
