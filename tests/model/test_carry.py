"""The carry contract (model/carry.py): every state type that crosses a call boundary declares
LOGICAL_AXES naming its fields, with one axis name per dimension of the arrays the tiny models really
produce (init_carry, after a segment, and the decode state), and sharding.carry_axes accepts the carry
of each family."""

import glob
import inspect
import os
from typing import NamedTuple

import jax
import numpy as np
import pytest
from flax import nnx

from block_recurrent import ginconf, sharding
from block_recurrent.configs import ConfigError
from block_recurrent.model import carry as carry_lib, factory, prefill

# Each type's fields hold arrays (or tuples of arrays, one per layer), except a container's, which hold
# typed states that declare their own axes.
CARRY_TYPES = {name: t for name, t in vars(carry_lib).items()
               if inspect.isclass(t) and issubclass(t, tuple) and hasattr(t, '_fields')}
CONTAINERS = {'LayerStates'}
GIN_DIR = os.path.join(os.path.dirname(__file__), '..', '..', 'gin')
TINY_GINS = sorted(os.path.relpath(p, GIN_DIR) for p in glob.glob(os.path.join(GIN_DIR, 'experiments/tiny/*.gin')))


def check_declared(node, seen: set) -> None:
  """Asserts `node` and every typed state in it declares LOGICAL_AXES matching its fields and ranks."""
  kind = type(node)
  assert kind.__name__ in CARRY_TYPES and CARRY_TYPES[kind.__name__] is kind, \
      f'{kind.__name__} crosses a call boundary but is not defined in model/carry.py'
  seen.add(kind.__name__)
  table = kind.__dict__.get('LOGICAL_AXES')
  assert isinstance(table, dict), f'{kind.__name__} declares no LOGICAL_AXES'
  if kind.__name__ in CONTAINERS:
    assert table == {}, f'{kind.__name__} is a container: its states declare their axes'
    for value in node:
      for state in value:
        check_declared(state, seen)
    return
  assert set(table) == set(kind._fields), f'{kind.__name__}: LOGICAL_AXES names {sorted(table)}, fields {kind._fields}'
  for field, value in zip(kind._fields, node):
    names = table[field]
    assert all(n is None or n in sharding.LOGICAL_RULES for n in names), f'{kind.__name__}.{field}: {names}'
    for leaf in (value if isinstance(value, tuple) else (value,)):
      assert len(names) == len(leaf.shape), \
          f'{kind.__name__}.{field}: rank {len(leaf.shape)} but axes {names}'


def _states(path):
  """The abstract carries of the tiny model `path` describes: fresh, after a segment, and for decoding."""
  cfg = ginconf.model_config([path])

  def make():
    model = factory.build(cfg, nnx.Rngs(0))
    fresh = model.init_carry(2)
    toks = np.zeros((2, cfg.segment_length), np.int32)
    _, after = model(toks, fresh, np.array([True, True]))
    return {'init_carry': fresh, 'after a segment': after, 'token form': prefill.fresh_state(model, 2)}

  return cfg, jax.eval_shape(make)


def test_every_carry_type_is_a_named_tuple_with_declared_axes():
  assert set(CARRY_TYPES) == {'Carry', 'DecodeState', 'LayerStates', 'ReLiTState', 'AReLiTState', 'CacheState'}
  for name, kind in CARRY_TYPES.items():
    table = kind.__dict__.get('LOGICAL_AXES')
    assert isinstance(table, dict), f'{name} declares no LOGICAL_AXES'
    assert set(table) == (set() if name in CONTAINERS else set(kind._fields)), name
  assert carry_lib.ModelCarry == carry_lib.Carry | carry_lib.LayerStates


def test_the_tiny_configs_produce_carries_that_match_their_declarations():
  assert len(TINY_GINS) >= 7, TINY_GINS
  seen = set()
  for path in TINY_GINS:
    cfg, states = _states(path)
    for what, state in states.items():
      assert isinstance(state, carry_lib.ModelCarry | carry_lib.DecodeState), f'{path} {what}: {type(state)}'
      check_declared(state, seen)
    assert type(states['init_carry']) is type(states['after a segment'])
    expected = carry_lib.Carry if cfg.sequence_layer == 'attention' else carry_lib.LayerStates
    assert type(states['init_carry']) is expected, path
  assert seen == set(CARRY_TYPES), f'types no tiny config produces: {set(CARRY_TYPES) - seen}'


def test_the_checker_rejects_a_wrong_declaration():
  class Bad(NamedTuple):
    x: jax.Array
    LOGICAL_AXES = {'x': ('batch',)}

  CARRY_TYPES['Bad'] = Bad
  try:
    with pytest.raises(AssertionError, match='rank 2'):
      check_declared(Bad(jax.ShapeDtypeStruct((2, 3), np.float32)), set())
  finally:
    del CARRY_TYPES['Bad']
  with pytest.raises(AssertionError, match='not defined in model/carry.py'):
    check_declared(Bad(jax.ShapeDtypeStruct((2,), np.float32)), set())


@pytest.mark.parametrize('path', ['experiments/tiny/rec_fixed_skip.gin', 'experiments/tiny/relit_mixed.gin',
                                  'experiments/tiny/arelit.gin'])
def test_sharding_accepts_each_familys_carry(path):
  _, states = _states(path)
  mesh = sharding.make_mesh(2, 1, 4, devices=jax.devices()[:8])
  for what, state in states.items():
    axes = sharding.carry_axes(state)
    leaves = jax.tree.leaves(state)
    names = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple) and all(
        n is None or isinstance(n, str) for n in x))
    assert len(names) == len(leaves), f'{path} {what}'
    for leaf, leaf_names in zip(leaves, names):
      assert len(leaf_names) == len(leaf.shape) and leaf_names[0] == 'batch', f'{path} {what}: {leaf_names}'
    specs = jax.tree.leaves(sharding.carry_shardings(mesh, state),
                            is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    assert len(specs) == len(leaves) and all(s.spec[0] == 'data' for s in specs), f'{path} {what}'


def test_sharding_rejects_a_carry_type_without_axes():
  class Undeclared(NamedTuple):
    x: jax.Array

  with pytest.raises(ConfigError, match='declares no LOGICAL_AXES'):
    sharding.carry_axes(carry_lib.LayerStates((Undeclared(np.zeros((2, 3))),)))
