"""Per-device memory of a training run on a mesh one does not need to have: parameters, optimiser state
and the carry (recurrent states and XL caches), each sharded by the rules in sharding.py.

Shapes come from `jax.eval_shape` (nothing is allocated) and shard sizes from the same PartitionSpecs the
trainer uses, so `brt-info --devices 16 --gin_file=gin/mesh/fsdp.gin ...` answers "does the 1.3B model
fit on a v4-32?" before booking it. Activations are not counted: they depend on XLA's schedule and the
remat policy (launch/aot_check.py compiles the step for a TPU topology and reports them).
"""

from __future__ import annotations

import math
import types
from typing import NamedTuple

import jax
from flax import nnx

from block_recurrent import configs, sharding
from block_recurrent.model import factory
from block_recurrent.train import optim


class Plan(NamedTuple):
  mesh: dict  # axis -> size
  params: int  # bytes per device
  opt_state: int
  carry: int  # train and evaluation carries
  params_total: int  # bytes over all devices, unsharded
  opt_state_total: int

  @property
  def per_device(self) -> int:
    return self.params + self.opt_state + self.carry


def _shard_bytes(leaf, spec, axes: dict) -> int:
  split = 1
  for part in spec:
    for axis in ((part,) if isinstance(part, str) else tuple(part or ())):
      split *= axes[axis]
  return math.prod(leaf.shape) * leaf.dtype.itemsize // split


def plan(model_cfg: configs.ModelConfig, train_cfg: configs.TrainConfig, batch_size: int,
         mesh_cfg: configs.MeshConfig, num_devices: int, eval_batch_size: int | None = None) -> Plan:
  """The train state's carry and its evaluation carry (eval_batch_size rows, default batch_size) both
  count: the trainer keeps both."""
  data, fsdp, model = sharding.mesh_shape(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.model, num_devices)
  mesh = types.SimpleNamespace(shape={'data': data, 'fsdp': fsdp, 'model': model})
  sharding.check_batch(batch_size, mesh.shape, 'batch size')
  if eval_batch_size:
    sharding.check_batch(eval_batch_size, mesh.shape, 'evaluation batch size')
  def shapes():
    lm = factory.build(model_cfg, nnx.Rngs(0))
    params = nnx.state(lm, nnx.Param)
    return (params, optim.optimizer(train_cfg).init(params),
            (lm.init_carry(batch_size), lm.init_carry(eval_batch_size or batch_size)))

  params, opt_state, carry = jax.eval_shape(shapes)
  p_specs = sharding.param_specs(mesh, params)
  o_specs = sharding.match_params(opt_state, params, p_specs, jax.sharding.PartitionSpec())
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  total = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
  sharded = lambda tree, specs: sum(_shard_bytes(x, s, mesh.shape) for x, s in
                                    zip(jax.tree.leaves(tree), jax.tree.leaves(specs, is_leaf=is_spec)))
  return Plan(dict(mesh.shape), sharded(params, p_specs), sharded(opt_state, o_specs),
              sharded(carry, sharding.carry_specs(mesh, carry)),
              total(params), total(opt_state))


def describe(p: Plan, num_devices: int, batch_size: int) -> str:
  gib = lambda b: f'{b / 2 ** 30:.2f} GiB'
  mesh = ' x '.join(f'{k}={v}' for k, v in p.mesh.items())
  return '\n'.join([
      f'mesh {mesh} ({num_devices} devices), batch {batch_size}: per device',
      f'  parameters       {gib(p.params)}  (of {gib(p.params_total)})',
      f'  optimiser state  {gib(p.opt_state)}  (of {gib(p.opt_state_total)})',
      f'  carry            {p.carry / 2 ** 20:.1f} MiB  (train + evaluation: states and XL caches)',
      f'  total            {gib(p.per_device)}  (activations not included)',
  ])
