"""The paper's Adafactor on our stacked parameters == optax's Adafactor (decay 0.8, momentum 0.9, parameter
scale, update clipping at 1.0) applied to each of the reference's tensors on its own, over 3 steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent import configs, sharding
from block_recurrent.train import adafactor, optim
import helpers

# d = 128 and 4 heads of 32: the reference's [d, H*D] kernels are factored; our [d, n, H, D] stack would not be.
WIDE = dict(d_model=128, num_heads=4, head_dim=32, mlp_dim=256, num_layers=2, window=8, segment_length=16)


def reference_tensors(name: str, a: np.ndarray) -> list[np.ndarray]:
  """The tensors the reference code keeps for one of our parameters (written out here, independently of
  adafactor.REFERENCE_TENSORS): separate q/k/v/q2 kernels [d, H*D], one [n*H*D, d] output projection,
  a temperature vector per attention, the LSTM gate's kernels and biases apart."""
  if name in ('qkv', 'kv', 'q'):
    return [a[:, i].reshape(a.shape[0], -1) for i in range(a.shape[1])]
  if name == 'out' or (name == 'ffn_in' and a.ndim == 4):
    return [a.reshape(-1, a.shape[-1])]
  if name == 'temperature' or (name == 'bias' and a.ndim == 2):
    return [a[i] for i in range(a.shape[0])]
  if name == 'kernel':
    return [a[:, i] for i in range(a.shape[1])]
  return [a]


def _split(tree):
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    for i, piece in enumerate(reference_tensors(sharding.param_name(path), np.asarray(leaf))):
      flat[f'{jax.tree_util.keystr(path)}#{i}'] = jnp.asarray(piece)
  return flat


@pytest.mark.parametrize('variant,kv_heads', [('rec_lstm_dual', None), ('rec_fixed_single', 2)])
def test_paper_adafactor_equals_optax_on_each_reference_tensor(variant, kv_heads):
  """Every kind of stacked parameter: qkv, out, temperatures, LSTM kernels and biases (lstm, dual), the
  single wiring's [2, H, D, F] FFN kernel, and kv / q with fewer key/value heads."""
  cfg = helpers.config(variant, **WIDE, kv_heads=kv_heads)
  model = brt.build_model(config=cfg, seed=0)
  params, apply, _ = brt.functional(model)

  def loss(p, seed):
    toks = helpers.tokens(seed, 2, cfg.segment_length + 1)
    logits, _ = apply(p, toks[:, :-1], model.init_carry(2), np.ones(2, bool))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), toks[:, 1:, None], -1))

  train_cfg = configs.TrainConfig(optimizer='adafactor', learning_rate=1.0, warmup_steps=4)
  ours = optim.optimizer(train_cfg)
  reference = optax.adafactor(optim.schedule(train_cfg), decay_rate=0.8, momentum=0.9,
                              multiply_by_parameter_scale=True, clipping_threshold=1.0)
  unclipped = optax.adafactor(optim.schedule(train_cfg), decay_rate=0.8, momentum=0.9,
                              multiply_by_parameter_scale=True, clipping_threshold=None)
  stacked = optax.adafactor(optim.schedule(train_cfg), decay_rate=0.8, momentum=0.9,
                            multiply_by_parameter_scale=True, clipping_threshold=1.0)

  ref_params = _split(params)
  state, ref_state = ours.init(params), reference.init(ref_params)
  unclipped_state, stacked_state = unclipped.init(ref_params), stacked.init(params)
  grad = jax.jit(jax.grad(loss), static_argnums=1)
  for step in range(3):
    g = grad(params, step)
    updates, state = jax.jit(ours.update)(g, state, params)
    ref_updates, ref_state = jax.jit(reference.update)(_split(g), ref_state, ref_params)
    got = _split(updates)
    assert got.keys() == ref_updates.keys()
    for key, want in ref_updates.items():  # float32 rounding, relative to the tensor's largest update
      err = float(jnp.max(jnp.abs(got[key] - want)))
      assert err <= 1e-5 * float(jnp.max(jnp.abs(want))), f'step {step}: {key}: {err:.3g}'
    if step == 0:
      # what the test tells apart: without clipping, or on our stacked arrays, the updates differ
      no_clip, unclipped_state = unclipped.update(_split(g), unclipped_state, ref_params)
      as_stacked, stacked_state = stacked.update(g, stacked_state, params)
      gap = lambda a, b: max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-30))
                             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
      assert gap(no_clip, ref_updates) > 1e-3
      assert gap(_split(as_stacked), ref_updates) > 1e-2
    params = optax.apply_updates(params, updates)
    ref_params = optax.apply_updates(ref_params, ref_updates)

  # the reference's [128, 128] kernels are factored: no full second moment is kept for our qkv stack
  qkv_v = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(state[1].v)[0]  # state[0]: the global-norm clip's (empty)
           if sharding.param_name(path) in ('qkv', 'q')]
  assert qkv_v and all(v.size == 1 for v in qkv_v)


def test_adamw_is_untouched_and_adafactor_state_shards_like_its_parameters():
  cfg = helpers.config('rec_fixed_skip', **WIDE)
  params = nnx.state(brt.build_model(config=cfg, seed=0), nnx.Param)
  adamw = optim.optimizer(configs.TrainConfig(optimizer='adamw', learning_rate=1e-3, warmup_steps=1))
  # state[0] is the global-norm clip's, always chained (at an infinite norm when grad_clip = 0): empty
  assert adamw.init(params)[0] == optax.EmptyState()
  assert type(adamw.init(params)[1]) is type(optax.adamw(1e-3).init(params))
  state = optim.optimizer(configs.TrainConfig()).init(params)[1]
  mesh = sharding.make_mesh(fsdp=2, model=4, data=1)
  shardings = sharding.like_params(mesh, state, params, sharding.param_shardings(mesh, params))
  qkv = [s for path, s in jax.tree_util.tree_flatten_with_path(shardings.momentum)[0]
         if sharding.param_name(path) == 'qkv']
  assert qkv and all(tuple(s.spec) == ('fsdp', None, 'model', None) for s in qkv)
  with pytest.raises(brt.ConfigError, match='adafactor_clipping must be >= 0'):
    configs.TrainConfig(adafactor_clipping=-1.0)
