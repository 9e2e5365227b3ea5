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


def _strategy_run(mesh_cfg):
  """Two optimisation steps of the tiny recurrent model (4 heads, Adam) on 8 rows, under one mesh."""
  from block_recurrent import configs
  from block_recurrent.train import loop

  model_cfg = helpers.config('rec_fixed_skip', num_heads=4, head_dim=8, mlp_dim=64, dropout_rate=0.0)
  data_cfg = configs.DataConfig(task='pg_mini_bytes', batch_size=8)
  train_cfg = configs.TrainConfig(optimizer='adamw', learning_rate=1e-2, warmup_steps=1)
  s = loop.setup(model_cfg, data_cfg, train_cfg, mesh_cfg)
  state = jax.jit(s.init, out_shardings=s.state_sh)()
  train_fn = loop.train_program(s, model_cfg)
  toks = helpers.tokens(5, 8, model_cfg.segment_length + 1, vocab=256)
  batch = {'inputs': toks[:, :-1], 'targets': toks[:, 1:], 'mask': np.ones((8, model_cfg.segment_length), bool),
           'start': np.array([True] * 8), 'num_bytes': np.full((8,), model_cfg.segment_length, np.int32)}
  placed = {k: jax.device_put(v, s.batch_sh[k]) for k, v in batch.items()}
  hlo = train_fn.lower(state, placed).as_text()
  # activations are pinned at every layer boundary (forward, and the transposed constraint backward)
  assert hlo.count('sharding_constraint') >= 2 * model_cfg.num_layers, hlo.count('sharding_constraint')
  losses = []
  for _ in range(2):
    state, metrics = train_fn(state, placed)
    losses.append(float(metrics['loss']))
  return state, losses


@pytest.fixture(scope='module')
def data_parallel():
  from block_recurrent import configs
  return _strategy_run(configs.MeshConfig(data=-1))


@pytest.mark.parametrize('fsdp,model', [(8, 1), (2, 4)])
def test_fsdp_and_model_parallel_steps_equal_data_parallel(data_parallel, fsdp, model):
  from block_recurrent import configs
  state, losses = _strategy_run(configs.MeshConfig(data=1, fsdp=fsdp, model=model))
  ref_state, ref_losses = data_parallel
  # The losses of both steps (the second after an update), and Adam's moments, which hold every gradient.
  # Parameters are not compared elementwise: Adam divides by sqrt(v) + 1e-8, so for a dead ReLU unit's
  # near-zero gradients a 1e-10 difference in the moments becomes ~1e-5 in the parameter (measured).
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
  helpers.assert_close(state.opt_state, ref_state.opt_state, 1e-5, 'optimiser state after 2 steps')
  assert float(ref_state.step) == 2 and losses[1] < losses[0]
  # the rules really shard: the embedding table over fsdp along d, Adam's moments like their parameter
  embed = state.params['embed'][...]
  assert tuple(embed.sharding.spec) == ('model' if model > 1 else None, 'fsdp'), embed.sharding.spec
  assert embed.addressable_shards[0].data.shape[1] == embed.shape[1] // fsdp
  mu = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.shape == embed.shape]
  assert mu and all(m.sharding.spec == embed.sharding.spec for m in mu)
  qkv = state.params['layers'][0]['qkv'][...]
  assert tuple(qkv.sharding.spec) == ('fsdp', None, 'model' if model > 1 else None, None), qkv.sharding.spec
  assert qkv.addressable_shards[0].data.shape == (qkv.shape[0] // fsdp, qkv.shape[1], qkv.shape[2] // model,
                                                  qkv.shape[3])
  ref_embed = ref_state.params['embed'][...]
  assert all(p is None for p in ref_embed.sharding.spec)  # data parallel: replicated


@pytest.mark.parametrize('gin_file', sharding.STRATEGIES)
def test_mesh_strategy_files_build_meshes(gin_file):
  from block_recurrent import configs, ginconf
  ginconf.parse([gin_file], [])
  mesh_cfg = ginconf.bound(configs.MeshConfig)
  mesh = sharding.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.model)
  assert mesh.devices.size == 8
  assert sharding.mesh_shape(1, -1, 4, 16) == (1, 4, 4)
  with pytest.raises(brt.ConfigError, match='at most one axis may be -1'):
    sharding.mesh_shape(-1, -1, 1, 8)


def _typed_carries():
  """One carry of every kind, 2 rows and 4 heads: name -> (carry, the PartitionSpecs expected on 2x4)."""
  from block_recurrent.model import decode
  rec = brt.build_model(config=helpers.config('rec_fixed_skip', num_heads=4, head_dim=8), seed=0)
  linear = lambda kind: brt.build_model(config=helpers.config(
      'slide', sequence_layer=kind, num_heads=4, head_dim=8, dropout_rate=0.0, gtrxl_memory=6), seed=0)
  P = jax.sharding.PartitionSpec
  cache = P('data', None, 'model', None)
  return {
      'xl caches and recurrent state': (rec.init_carry(2), dict(keys=cache, values=cache, cache_valid=P('data'),
                                                                 states=P('data', None, None))),
      'relit': (linear('relit').init_carry(2).states[0], dict(C=P('data', 'model', None, None),
                                                             s=P('data', 'model', None))),
      'arelit': (linear('arelit').init_carry(2).states[0], dict(K=P('data', 'model', None, None),
                                                               V=P('data', 'model', None, None),
                                                               s=P('data', 'model', None), tau=P('data'))),
      'gtrxl cache': (linear('gtrxl').init_carry(2).states[0], dict(keys=cache, values=cache,
                                                                   valid=P('data', None))),
      'decode state': (decode.init(rec, 2), dict(keys=cache, values=cache, valid=P('data', None),
                                                 position=P('data'), states=P('data', None, None),
                                                 state_keys=cache, state_values=cache)),
  }


def test_every_kind_of_carry_gets_the_axes_its_type_declares():
  mesh = sharding.make_mesh(data=2, model=4)
  for what, (carry, expected) in _typed_carries().items():
    specs = sharding.carry_specs(mesh, carry)
    for field, want in expected.items():
      for got in jax.tree.leaves(getattr(specs, field), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
        assert got == want, f'{what}.{field}: {got} != {want}'
    placed = jax.device_put(carry, sharding.carry_shardings(mesh, carry))  # really shards on the 2x4 mesh
    first = jax.tree.leaves(placed)[0]
    assert first.addressable_shards[0].data.shape[0] == 1, what
  # a language model's carry holds the per-layer states; the whole carry resolves
  lm = brt.build_model(config=helpers.config('slide', sequence_layer='relit', num_heads=4, head_dim=8,
                                             dropout_rate=0.0, attention_layers=(1,), gtrxl_memory=6), seed=0)
  carry = lm.init_carry(2)
  assert len(jax.tree.leaves(sharding.carry_specs(mesh, carry))) >= len(jax.tree.leaves(carry))


def test_a_carry_leaf_without_declared_axes_is_an_error_naming_it():
  from typing import NamedTuple
  mesh = sharding.make_mesh(data=2, model=4)
  carry = brt.build_model(config=helpers.config('rec_fixed_skip'), seed=0).init_carry(2)

  class Undeclared(NamedTuple):
    cache: jax.Array

  class Partly(NamedTuple):
    keys: jax.Array
    extra: jax.Array
    LOGICAL_AXES = {'keys': ('batch', None)}

  with pytest.raises(brt.ConfigError, match=r'Undeclared declares no LOGICAL_AXES'):
    sharding.carry_specs(mesh, Undeclared(jnp.zeros((2, 3))))
  with pytest.raises(brt.ConfigError, match=r'carry leaf \.extra \(shape \(2, 3\)\) has no declared logical axes'):
    sharding.carry_specs(mesh, Partly(jnp.zeros((2, 3)), jnp.zeros((2, 3))))
  with pytest.raises(brt.ConfigError, match=r'carry leaf \.keys has rank 3 but its type declares 2 axes'):
    sharding.carry_specs(mesh, Partly(jnp.zeros((2, 3, 4)), jnp.zeros((2,))))
  with pytest.raises(brt.ConfigError, match=r'carry leaf \[0\] .* has no declared logical axes'):
    sharding.carry_specs(mesh, (jnp.zeros((2, 3)),))  # a bare array is never guessed from its rank
  assert sharding.carry_specs(mesh, carry).cache_valid == jax.sharding.PartitionSpec('data')
