"""GTrXL's attention (model/gtrxl.py) beyond the contract every sequence layer shares (step == sequence
with the step mask and resets, in test_linear_recurrent.py): the 'xl' training mask sees more keys than
the step form, and the cache is the same either way."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent.model import gtrxl, linear_recurrent as linrec
import helpers

B, T, D, H, DH = 2, 21, 16, 2, 4


def _x(seed, length=T):
  return jax.random.normal(jax.random.key(seed), (B, length, D), jnp.float32)


def test_gtrxl_xl_mask_sees_more_than_the_step_form():
  step_layer = gtrxl.GTrXLAttention(D, H, DH, 4, nnx.Rngs(0), mask='step')
  xl_layer = gtrxl.GTrXLAttention(D, H, DH, 4, nnx.Rngs(0), mask='xl')
  x, reset = _x(6), np.zeros((B, T), bool)
  y_step, s_step = step_layer(x, step_layer.init_state(B), reset)
  y_xl, s_xl = xl_layer(x, xl_layer.init_state(B), reset)
  helpers.assert_close(y_step[:, :5], y_xl[:, :5], 1e-6, 'the first M+1 tokens see the same keys')
  assert float(jnp.max(jnp.abs(y_step[:, 5:] - y_xl[:, 5:]))) > 1e-4  # later ones see M+t+1 keys under xl
  helpers.assert_close(s_step, s_xl, 0.0, 'the cache is the last M keys either way')
  assert linrec.state_bytes(s_step) == B * 4 * H * DH * 4 * 2 + B * 4
