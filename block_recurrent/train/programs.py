"""What the train and eval programs are made of, built from the configs before any compute: the mesh, the
optimiser, the abstract train state with its shardings (what checkpoints restore into), and the jitted
train and eval steps. brt-train's loop, brt-eval, brt-generate and brt-compile build them here.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import configs, sharding
from block_recurrent.data import segments, tasks
from block_recurrent.model import factory
from block_recurrent.train import optim, step as step_lib


class Setup(NamedTuple):
  """Everything the train and eval programs share, built from the configs before any compute."""
  mesh: jax.sharding.Mesh
  tx: Any
  schedule: Any
  graphdef: Any
  init: Callable[[], step_lib.TrainState]
  target: step_lib.TrainState  # abstract state with shardings: what checkpoints restore into
  state_sh: step_lib.TrainState
  batch_sh: dict
  eval_batch_sh: dict
  eval_batch: int


def setup(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig, train_cfg: configs.TrainConfig,
          mesh_cfg: configs.MeshConfig, devices=None) -> Setup:
  """devices: the mesh's devices (default all of jax.devices(); launch/aot_check.py passes a TPU
  topology's abstract devices to compile for hardware that is not here)."""
  vocab = tasks.vocab_size(data_cfg.task, data_cfg.spm_path)
  if vocab > model_cfg.vocab_size:
    raise configs.ConfigError(f'task {data_cfg.task} has {vocab} token ids but the model has vocab_size '
                              f'{model_cfg.vocab_size}: pick a vocab/*.gin that matches the task')
  mesh = sharding.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.model, devices=devices)
  eval_batch = data_cfg.eval_batch_size or data_cfg.batch_size
  sharding.check_batch(data_cfg.batch_size, mesh.shape)
  sharding.check_batch(eval_batch, mesh.shape, 'the evaluation batch (DataConfig.eval_batch_size or batch_size)')
  tx, schedule = optim.optimizer(train_cfg), optim.schedule(train_cfg)
  abstract_model = nnx.eval_shape(lambda: factory.build(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(mesh, abstract_params)

  def init(seed=train_cfg.seed):
    model = factory.build(model_cfg, nnx.Rngs(params=seed))
    params = nnx.state(model)
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               rng=jax.random.key_data(jax.random.key(seed + 1)),
                               carry=model.init_carry(data_cfg.batch_size), eval_carry=model.init_carry(eval_batch))

  abstract_state = jax.eval_shape(init)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state_sh = step_lib.TrainState(step=replicated, params=param_sh,
                                 opt_state=sharding.like_params(mesh, abstract_state.opt_state,
                                                                abstract_state.params, param_sh),
                                 rng=replicated, carry=sharding.carry_shardings(mesh, abstract_state.carry),
                                 eval_carry=sharding.carry_shardings(mesh, abstract_state.eval_carry))

  def batch_shardings(rows):
    return {k: sharding.batch_sharding(mesh, (rows,) + ((model_cfg.segment_length,)
                                       if k in ('inputs', 'targets', 'mask') else ()))
            for k in ('inputs', 'targets', 'mask', 'start', 'num_bytes')}

  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state,
                        state_sh)
  return Setup(mesh, tx, schedule, graphdef, init, target, state_sh, batch_shardings(data_cfg.batch_size),
               batch_shardings(eval_batch), eval_batch)


def batch_arrays(batch: segments.Batch) -> dict:
  return {'inputs': batch.inputs, 'targets': batch.targets, 'mask': batch.mask,
          'start': batch.start_of_sequence, 'num_bytes': batch.num_bytes.astype(np.int32)}


def put(arrays: dict, shardings: dict) -> dict:
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in arrays.items()}


def train_program(s: Setup, model_cfg: configs.ModelConfig, inject_nonfinite: tuple[int, ...] = ()):
  """The jitted train step with the setup's shardings (state donated); inject_nonfinite: steps whose
  gradients are made NaN (TrainConfig.inject_nonfinite_steps, fault injection)."""
  def step(state, batch):
    with jax.sharding.use_abstract_mesh(s.mesh.abstract_mesh):  # layer-boundary constraints see the mesh
      return step_lib.train_step(s.graphdef, s.tx, s.schedule, state, batch, dropout=model_cfg.dropout_rate > 0,
                                 inject_nonfinite=inject_nonfinite)

  return jax.jit(step, in_shardings=(s.state_sh, s.batch_sh), out_shardings=(s.state_sh, None), donate_argnums=0)


def eval_program(s: Setup, ablate_state: str = 'none'):
  def step(state, batch):
    with jax.sharding.use_abstract_mesh(s.mesh.abstract_mesh):
      return step_lib.eval_step(s.graphdef, state, batch, ablate_state)

  return jax.jit(step, in_shardings=(s.state_sh, s.eval_batch_sh), out_shardings=(s.state_sh, None), donate_argnums=0)


def has_diagnostics(model_cfg: configs.ModelConfig) -> bool:
  """Whether the model has diagnostics to log (LanguageModel.diagnostics): a Block-Recurrent model in the
  segment form (feedback models run block by block and are not covered)."""
  return model_cfg.sequence_layer == 'attention' and bool(model_cfg.recurrent_indices) and not model_cfg.feedback


def diagnostics_program(s: Setup):
  """The jitted diagnostics step (step.diagnostics_step): scalars from one evaluation batch."""
  def step(state, batch):
    with jax.sharding.use_abstract_mesh(s.mesh.abstract_mesh):
      return step_lib.diagnostics_step(s.graphdef, state, batch)

  return jax.jit(step, in_shardings=(s.state_sh, s.eval_batch_sh))
