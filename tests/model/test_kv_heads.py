"""Grouped-query and multi-query attention (ModelConfig.kv_heads).

The proof of correctness: a model with G key/value heads computes exactly what the one-K/V-per-head model
computes when each of its K/V kernels is repeated for the H/G query heads that share it (token layers and
the recurrent state alike). The form equivalences (segment == block == token by token, sharded ==
unsharded, parameter counts) run for the grouped variant `rec_grouped_kv` in the modules that cover every
variant.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent import flops
import helpers


def _repeated_kv(tree, repeats: int):
  """A pure param dict with every {'kv', 'q'} pair replaced by the equivalent stacked 'qkv' kernel."""
  if not isinstance(tree, dict):
    return tree
  out = {k: _repeated_kv(v, repeats) for k, v in tree.items() if k not in ('kv', 'q')}
  if 'kv' in tree:
    kv = jnp.repeat(jnp.asarray(tree['kv']), repeats, axis=2)  # [d, 2, G, D] -> [d, 2, H, D]
    out['qkv'] = jnp.concatenate([kv, jnp.asarray(tree['q'])], axis=1)
  return out


@pytest.mark.parametrize('kv_heads', [1, 2])
def test_grouped_equals_per_head_model_with_repeated_kernels(kv_heads):
  cfg = helpers.config('rec_fixed_skip', num_heads=4, head_dim=8, kv_heads=kv_heads, dropout_rate=0.0)
  grouped = brt.build_model(config=cfg, seed=3)
  full = brt.build_model(config=dataclasses.replace(cfg, kv_heads=None), seed=0)
  graphdef, state = nnx.split(full)
  pure = _repeated_kv(nnx.to_pure_dict(nnx.split(grouped)[1]), cfg.num_heads // kv_heads)
  nnx.replace_by_pure_dict(state, pure)
  full = nnx.merge(graphdef, state)

  toks = helpers.tokens(4, 2, 2 * cfg.segment_length)
  n = cfg.segment_length
  carries = {'grouped': grouped.init_carry(2), 'full': full.init_carry(2)}
  assert carries['grouped'].keys[0].shape == (2, cfg.window, kv_heads, cfg.head_dim)
  for s in range(2):  # two segments: the carried cache and state are used too
    start = np.array([s == 0, s == 0])
    lg, carries['grouped'] = grouped(toks[:, s * n:(s + 1) * n], carries['grouped'], start)
    lf, carries['full'] = full(toks[:, s * n:(s + 1) * n], carries['full'], start)
    helpers.assert_close(lg, lf, 1e-5, f'kv_heads={kv_heads} logits, segment {s}')
    helpers.assert_close(carries['grouped'].states, carries['full'].states, 1e-5, 'states')
    repeat = lambda t: jnp.repeat(t, cfg.num_heads // kv_heads, axis=2)
    helpers.assert_close([repeat(k) for k in carries['grouped'].keys], carries['full'].keys, 1e-5, 'cache keys')
  assert float(jnp.std(lg)) > 0


def test_parameters_and_cache_shrink_with_fewer_kv_heads():
  base = helpers.config('rec_fixed_skip', num_heads=4, head_dim=8)
  counts = {}
  for g in (None, 2, 1):
    cfg = dataclasses.replace(base, kv_heads=g)
    model = brt.build_model(config=cfg, seed=0)
    counts[g] = brt.count_params(model)
    assert counts[g] == flops.param_count(cfg)
  d, hd = base.d_model, base.head_dim
  # Two K/V kernels per token layer (3) and per state (1), each d x (H - G) x D smaller.
  assert counts[None] - counts[1] == 4 * 2 * d * (4 - 1) * hd
  assert counts[None] - counts[2] == 4 * 2 * d * (4 - 2) * hd
  assert flops.forward_flops_per_token(dataclasses.replace(base, kv_heads=1)) < flops.forward_flops_per_token(base)


@pytest.mark.parametrize('kv_heads, match', [(3, 'positive divisor of num_heads=4'), (0, 'positive divisor'),
                                              (8, 'positive divisor')])
def test_kv_heads_must_divide_num_heads(kv_heads, match):
  with pytest.raises(brt.ConfigError, match=match):
    helpers.config('slide', num_heads=4, head_dim=8, kv_heads=kv_heads)


def test_kv_heads_belongs_to_the_attention_family():
  with pytest.raises(brt.ConfigError, match='kv_heads belongs to the attention family'):
    brt.ModelConfig(sequence_layer='relit', kv_heads=1, dropout_rate=0.0)
