"""Meshes and the one table that maps logical axis names to mesh axes.

Model code never names mesh axes. Parameters get logical names from `PARAM_AXES` (by parameter name and
rank), the carry from the `LOGICAL_AXES` its types declare (`carry_axes`), activations from `constrain`;
`LOGICAL_RULES` maps each logical name to
mesh axes of the ('data', 'fsdp', 'model') mesh. A mesh axis that does not divide a dimension is dropped
for that array (it is replicated instead), and so is one already used by an earlier dimension, so tiny
test models run on any mesh.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from block_recurrent.configs import ConfigError

MESH_AXES = ('data', 'fsdp', 'model')
STRATEGIES = ('gin/mesh/data_parallel.gin', 'gin/mesh/fsdp.gin', 'gin/mesh/fsdp_model.gin')

# logical name -> mesh axes (None: replicated)
LOGICAL_RULES: dict[str, tuple[str, ...] | str | None] = {
    'batch': ('data', 'fsdp'),
    'vocab': 'model',
    'embed': 'fsdp',
    'heads': 'model',
    'mlp': 'model',
    'kv': None,
    'states': None,
    'length': None,
}

# (parameter name, rank) -> logical names of its dimensions
PARAM_AXES: dict[tuple[str, int], tuple[str | None, ...]] = {
    ('embed', 2): ('vocab', 'embed'),
    ('scale', 1): ('embed',),  # RMSNorm
    ('qkv', 4): ('embed', None, 'heads', 'kv'),
    ('kv', 4): ('embed', None, 'heads', 'kv'),  # fewer key/value heads (kv_heads): split only if they divide
    ('q', 4): ('embed', None, 'heads', 'kv'),
    ('out', 4): (None, 'heads', 'kv', 'embed'),
    ('ffn_in', 2): ('embed', 'mlp'),
    ('ffn_in', 4): (None, 'heads', 'kv', 'mlp'),  # the 'single' wiring reads h directly
    ('ffn_out', 2): ('mlp', 'embed'),
    ('relative_bias', 2): ('heads', None),
    ('temperature', 2): (None, 'heads'),
    ('initial', 2): ('states', 'embed'),
    ('ids', 2): ('states', 'embed'),
    ('bias', 1): ('embed',),  # fixed gate
    ('bias', 2): (None, 'embed'),  # LSTM gate
    ('kernel', 3): (None, None, 'embed'),  # LSTM gate
    # gated_lm.py: ReLiT / AReLiT features, GRU gates, GTrXL attention
    ('kqv', 4): ('embed', None, 'heads', 'kv'),
    ('p', 4): ('embed', None, 'heads', None),
    ('out', 3): ('heads', 'kv', 'embed'),
    ('w', 3): ('embed', None, None),
    ('u', 3): ('embed', None, None),
    ('rel', 3): ('embed', 'heads', 'kv'),
    ('u', 2): ('heads', 'kv'),
    ('gate_bias', 3): (None, 'heads', 'kv'),
    ('p3_bias', 2): ('heads', None),
    ('v', 2): ('heads', 'kv'),
}


def mesh_shape(data: int, fsdp: int, model: int, num_devices: int) -> tuple[int, int, int]:
  """The axis sizes with the one axis given as -1 (if any) taking the devices the others leave."""
  sizes = [data, fsdp, model]
  if sizes.count(-1) > 1:
    raise ConfigError(f'mesh data={data} x fsdp={fsdp} x model={model}: at most one axis may be -1')
  if -1 in sizes:
    rest = math.prod(v for v in sizes if v != -1)
    sizes[sizes.index(-1)] = num_devices // rest if rest > 0 else 0
  data, fsdp, model = sizes
  if data * fsdp * model != num_devices or min(sizes) < 1:
    raise ConfigError(f'mesh data={data} x fsdp={fsdp} x model={model} does not use the {num_devices} '
                      'devices: make the product equal the device count')
  return data, fsdp, model


def check_batch(rows: int, mesh_shape, what: str = 'DataConfig.batch_size', rules: dict = LOGICAL_RULES) -> None:
  """A batch whose rows cannot be split evenly over the mesh's batch axes is an error (never silently
  replicated on every device): it names the size, the axes and the nearest sizes that split."""
  axes = rules['batch']
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  ways = math.prod(mesh_shape[a] for a in axes)
  if rows % ways:
    below, above = rows // ways * ways, -(-rows // ways) * ways
    nearest = ' or '.join(str(n) for n in (below, above) if n > 0)
    split = ' x '.join(f'{a}={mesh_shape[a]}' for a in axes)
    raise ConfigError(f'{what} {rows} cannot be split evenly over the mesh\'s batch axes {split} ({ways} ways): '
                      f'use {nearest} rows, or a mesh whose batch axes divide {rows}')


def make_mesh(data: int = -1, fsdp: int = 1, model: int = 1, devices: Sequence | None = None) -> Mesh:
  """A ('data', 'fsdp', 'model') mesh; one axis may be -1 to take whatever devices are left."""
  devices = list(devices if devices is not None else jax.devices())
  data, fsdp, model = mesh_shape(data, fsdp, model, len(devices))
  return Mesh(np.asarray(devices).reshape(data, fsdp, model), MESH_AXES)


def spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
         rules: dict = LOGICAL_RULES) -> PartitionSpec:
  """PartitionSpec for an array with these logical names, dropping mesh axes that do not divide."""
  parts, used = [], set()
  for name, size in zip(names, shape):
    axes = rules.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)  # each mesh axis once
    if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
      parts.append(axes[0] if len(axes) == 1 else axes)
      used.update(axes)
    else:
      parts.append(None)
  return PartitionSpec(*parts)


def param_name(path) -> str | None:
  """A parameter's own name (the last named key of its path), e.g. 'qkv'."""
  keys = [getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', None))) for k in path]
  keys = [k for k in keys if isinstance(k, str) and k != 'value']
  return keys[-1] if keys else None


def _param_names(path, leaf) -> tuple[str | None, ...]:
  names = PARAM_AXES.get((param_name(path), leaf.ndim))
  if names is None:
    raise ConfigError(f'parameter {jax.tree_util.keystr(path)} (rank {leaf.ndim}) has no logical axes: '
                      'add it to sharding.PARAM_AXES')
  return names


def param_shardings(mesh: Mesh, params, rules: dict = LOGICAL_RULES):
  """NamedShardings for a parameter pytree (an nnx.State of Params, or abstract shapes of one)."""
  return jax.tree.map(lambda p: NamedSharding(mesh, p), param_specs(mesh, params, rules),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, shape: Sequence[int], rules: dict = LOGICAL_RULES) -> NamedSharding:
  """Rows over the batch axes, everything else replicated (tokens [B, N], start [B], ...)."""
  return NamedSharding(mesh, spec(('batch',) + (None,) * (len(shape) - 1), shape, mesh, rules))


def carry_shardings(mesh: Mesh, carry, rules: dict = LOGICAL_RULES):
  """NamedShardings for a carry (any typed carry: see carry_axes), e.g. caches over batch and heads."""
  return jax.tree.map(lambda p: NamedSharding(mesh, p), carry_specs(mesh, carry, rules),
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def carry_specs(mesh, carry, rules: dict = LOGICAL_RULES):
  """PartitionSpecs of a carry, from the logical axes its types declare (carry_axes)."""
  names = carry_axes(carry)
  return jax.tree.map(lambda leaf, n: spec(n, leaf.shape, mesh, rules), carry, names)


def _is_typed(node) -> bool:
  return isinstance(node, tuple) and hasattr(type(node), '_fields')


def carry_axes(carry):
  """The logical axis names of every leaf of a carry, as declared by the carry's own types.

  Every carry type is a NamedTuple with a class attribute `LOGICAL_AXES`: field name -> the names of
  that field's dimensions (a field holding a tuple of arrays, one per layer, gives the names of each).
  A field holding further typed carries (a tuple of per-layer states) is walked into. A leaf that no type
  declares, or whose rank differs from its declaration, is a ConfigError naming it: axes are never
  guessed from an array's rank.
  """
  def walk(node, where, declared):
    if _is_typed(node):
      table = getattr(type(node), 'LOGICAL_AXES', None)
      if table is None:
        raise ConfigError(f'carry {where or "(root)"}: type {type(node).__name__} declares no LOGICAL_AXES: '
                          'add the logical axis names of each of its fields')
      return type(node)(*(walk(value, f'{where}.{field}', table.get(field))
                          for field, value in zip(node._fields, node)))
    if isinstance(node, (tuple, list)):
      return type(node)(walk(v, f'{where}[{i}]', declared) for i, v in enumerate(node))
    if node is None:
      return None
    if declared is None:
      raise ConfigError(f'carry leaf {where} (shape {tuple(node.shape)}) has no declared logical axes: '
                        'declare them in its type\'s LOGICAL_AXES')
    if len(declared) != len(node.shape):
      raise ConfigError(f'carry leaf {where} has rank {len(node.shape)} but its type declares '
                        f'{len(declared)} axes {declared}: fix LOGICAL_AXES')
    return tuple(declared)

  return walk(carry, '', None)


def _path_keys(path) -> tuple:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def like_params(mesh: Mesh, tree, params, param_sh):
  """Shardings for optimiser state: a leaf whose path ends with a parameter's path and has its shape
  (Adam's moments, Adafactor's full-rank factors) is sharded as that parameter; anything else (step
  counts, factored row/column statistics) is replicated."""
  return match_params(tree, params, param_sh, NamedSharding(mesh, PartitionSpec()))


def match_params(tree, params, per_param, default):
  """For each leaf of `tree`, the `per_param` entry of the parameter whose path its path ends with and
  whose shape it has, else `default` (per_param: a pytree shaped like params, e.g. its shardings)."""
  by_path = {}
  values = jax.tree.leaves(per_param, is_leaf=lambda x: isinstance(x, (NamedSharding, PartitionSpec)))
  for (path, leaf), value in zip(jax.tree_util.tree_flatten_with_path(params)[0], values):
    by_path[_path_keys(path)] = (tuple(leaf.shape), value)

  def one(path, leaf):
    keys = _path_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return default

  return jax.tree_util.tree_map_with_path(one, tree)


def param_specs(mesh, params, rules: dict = LOGICAL_RULES):
  """PartitionSpecs of a parameter pytree; `mesh` needs only `.shape` (axis sizes), so planning for
  hardware one does not have works (brt-info --devices)."""
  return jax.tree_util.tree_map_with_path(lambda path, leaf: spec(_param_names(path, leaf), leaf.shape, mesh, rules),
                                          params)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pins an activation's layout at a layer boundary (e.g. ('batch', None, None): rows over the batch
  axes, the rest whole) when a mesh is in context (the trainer sets one); a no-op outside any mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not set(MESH_AXES) <= set(mesh.shape):
    return x
  return jax.lax.with_sharding_constraint(x, spec(names, x.shape, mesh))
