"""sharded == unsharded: the model over a 2x4 mesh of 8 fake CPU devices equals one device (1e-5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent import sharding
import helpers


@pytest.mark.parametrize('name', list(helpers.VARIANTS))
def test_every_parameter_has_logical_axes(name):
  params = nnx.state(brt.abstract_model(helpers.config(name)), nnx.Param)
  mesh = sharding.make_mesh(data=2, model=4)
  shardings = sharding.param_shardings(mesh, params)
  assert len(jax.tree.leaves(shardings)) == len(jax.tree.leaves(params))


@pytest.mark.parametrize('name', ['rec_lstm_single', 'feedback_fixed_skip'])
def test_sharded_forward_and_gradients_equal_one_device(name):
  assert jax.device_count() == 8
  cfg = helpers.config(name, num_heads=4, head_dim=8, mlp_dim=64)
  model = brt.build_model(config=cfg, seed=3)
  graphdef, params = nnx.split(model)
  toks = helpers.tokens(0, 4, cfg.segment_length)
  carry, start = model.init_carry(4), np.array([True, False, True, False])

  def loss_and_logits(p, toks, carry, start):
    logits, new_carry = nnx.merge(graphdef, p)(toks, carry, start)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 5]), (logits, new_carry)

  step = jax.value_and_grad(loss_and_logits, has_aux=True)
  (loss1, (logits1, carry1)), grads1 = jax.jit(step)(params, toks, carry, start)

  mesh = sharding.make_mesh(data=2, model=4)
  p_sh = sharding.param_shardings(mesh, params)
  c_sh = sharding.carry_shardings(mesh, carry)
  b2, b1 = sharding.batch_sharding(mesh, toks.shape), sharding.batch_sharding(mesh, start.shape)
  sharded = jax.jit(step, in_shardings=(p_sh, b2, c_sh, b1))
  placed = jax.device_put(params, p_sh)
  qkv = placed['layers'][0]['qkv']
  assert qkv[...].sharding.spec[2] == 'model'  # heads really are split over the model axis
  assert qkv[...].addressable_shards[0].data.shape[2] == cfg.num_heads // 4
  (loss8, (logits8, carry8)), grads8 = sharded(placed, toks, carry, start)
  assert logits8.sharding.spec[0] == 'data'  # rows stay split over the data axis
  helpers.assert_close(logits8, logits1, 1e-5, 'logits')
  helpers.assert_close(carry8, carry1, 1e-5, 'carry')
  helpers.assert_close(grads8, grads1, 1e-5, 'gradients')
  assert abs(float(loss8) - float(loss1)) <= 1e-5


def test_mesh_must_use_every_device():
  with pytest.raises(brt.ConfigError, match='does not use the 8 devices'):
    sharding.make_mesh(data=3, model=2)
