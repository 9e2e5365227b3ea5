"""Ahead-of-time compilation of the train, eval or generate step for a named TPU slice (XLA's real TPU
compiler through libtpu, no TPU needed) or for this machine's devices, with per-device memory, FLOPs and
whether it fits; `brt-compile` (block_recurrent/cli/compile.py) prints it."""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import NamedTuple

from block_recurrent import errors, quiet

os.environ.setdefault('NO_GCE_CHECK', 'true')

GIB = 2 ** 30


class Slice(NamedTuple):
  name: str
  topology: str  # jax.experimental.topologies name, e.g. 'v4:2x2x4'
  chip_config: str  # 'megacore' (v4, v5p) or 'default'
  host_bounds: tuple[int, int, int]  # chips per host in each dimension
  devices: int  # JAX devices (chips)
  kind: str
  hbm_gib: float  # per device
  peak_bf16: float  # FLOP/s per device, as stated by Cloud TPU


_3D = {8: '2x2x1', 16: '2x2x2', 32: '2x2x4', 64: '2x4x4', 128: '4x4x4', 256: '4x4x8', 512: '4x8x8'}
_2D = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16', 256: '16x16'}


def _slices() -> dict[str, Slice]:
  out = {}
  for cores, shape in _3D.items():
    out[f'v4-{cores}'] = Slice(f'v4-{cores}', f'v4:{shape}', 'megacore', (2, 2, 1), cores // 2, 'TPU v4', 32.0, 275e12)
    if cores <= 256:
      out[f'v5p-{cores}'] = Slice(f'v5p-{cores}', f'v5:{shape}', 'megacore', (2, 2, 1), cores // 2, 'TPU v5p', 95.0,
                                  459e12)
  for chips, shape in _2D.items():
    host = (1, 1, 1) if chips == 1 else (2, 2, 1)
    out[f'v5e-{chips}'] = Slice(f'v5e-{chips}', f'v5e:{shape}', 'default', host, chips, 'TPU v5e', 16.0, 197e12)
    out[f'v6e-{chips}'] = Slice(f'v6e-{chips}', f'v6e:{shape}', 'default', host, chips, 'TPU v6e', 32.0, 918e12)
  return out


SLICES = _slices()
STEPS = ('train', 'eval', 'generate')


class Report(NamedTuple):
  topology: str
  devices: int
  kind: str
  hbm_gib: float | None
  mesh: dict
  step: str
  rows: int
  arguments: int  # bytes per device
  outputs: int
  aliased: int
  temporaries: int
  code: int
  xla_flops: float  # per step, all devices
  analytic_flops: float
  compile_seconds: float

  @property
  def peak(self) -> int:
    """Per device: arguments + outputs not aliased to a donated argument + temporaries."""
    return self.arguments + self.outputs - self.aliased + self.temporaries

  @property
  def fits(self) -> bool:
    return self.hbm_gib is None or self.peak <= self.hbm_gib * GIB


def topology_devices(name: str):
  """(devices, Slice or None) of a slice name or `local`; ConfigError for an unknown name or no libtpu."""
  import jax  # pylint: disable=import-outside-toplevel

  from block_recurrent.configs import ConfigError  # pylint: disable=import-outside-toplevel
  if name == 'local':
    return jax.devices(), None
  if name not in SLICES:
    raise ConfigError(f'unknown --topology {name!r}: use local or one of {", ".join(SLICES)}')
  s = SLICES[name]
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    with quiet.silenced_stderr():  # libtpu's start-up warnings about TPU workers do not apply to a compile-only use
      topology = topologies.get_topology_desc(topology_name=s.topology, platform='tpu', chip_config_name=s.chip_config,
                                              chips_per_host_bounds=s.host_bounds, num_slices=1)
  except Exception as e:  # pylint: disable=broad-except
    first = errors.one_line(e, 1)[:160]
    if 'lockfile' in first:  # libtpu allows one process at a time unless told otherwise
      raise ConfigError(f'cannot compile for TPU slice {name} now: another process holds libtpu ({first}); wait '
                        'for it to finish, or set ALLOW_MULTIPLE_LIBTPU_LOAD=1 to compile alongside it') from None
    raise ConfigError(f'cannot compile for TPU slice {name} here ({first}): install libtpu with '
                      "pip install -e '.[tpu]'") from None
  return list(topology.devices), s


def _hints(model_cfg, mesh_cfg, step: str) -> str:
  tips = []
  if model_cfg.dtype == 'float32':
    tips.append('bf16 compute (gin/options/bf16.gin)')
  if step == 'train' and model_cfg.remat == 'none':
    tips.append('recomputing activations (gin/options/remat_full.gin)')
  if mesh_cfg.fsdp == 1 and mesh_cfg.model == 1:
    tips.append('FSDP to split parameters and optimiser state (gin/mesh/fsdp.gin)')
  tips.append('fewer rows per step (DataConfig.batch_size) or a larger slice')
  return '; '.join(tips)


def compile_step(model_cfg, data_cfg, train_cfg, mesh_cfg, topology: str, step: str = 'train') -> Report:
  """Compiles `step` for the topology; ConfigError (one line) for a configuration that cannot work,
  including one whose arguments alone exceed the device memory or that XLA refuses for lack of it."""
  from block_recurrent.train import memory_plan  # pylint: disable=import-outside-toplevel
  from block_recurrent import sharding  # pylint: disable=import-outside-toplevel
  from block_recurrent.configs import ConfigError  # pylint: disable=import-outside-toplevel
  from block_recurrent.train import loop  # pylint: disable=import-outside-toplevel
  if step not in STEPS:
    raise ConfigError(f'--step {step!r}: use one of {", ".join(STEPS)}')
  devices, slice_ = topology_devices(topology)
  hbm = slice_.hbm_gib if slice_ else None
  kind = slice_.kind if slice_ else devices[0].device_kind
  where = topology
  if step != 'generate':  # the batch must split over the mesh (the trainer's own check, before any compile)
    mesh_shape = dict(zip(('data', 'fsdp', 'model'),
                          sharding.mesh_shape(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.model, len(devices))))
    sharding.check_batch(data_cfg.batch_size, mesh_shape)
  if step != 'generate' and hbm is not None:  # what the arguments alone need, before spending a compile
    plan = memory_plan.plan(model_cfg, train_cfg, data_cfg.batch_size, mesh_cfg, len(devices), data_cfg.eval_batch_size)
    if plan.per_device > hbm * GIB:
      raise ConfigError(f'does not fit: peak per device {plan.per_device / GIB:.2f} GiB > {hbm:.2f} GiB HBM on {where} '
                        f'(parameters, optimiser state and carries alone); try {_hints(model_cfg, mesh_cfg, step)}')
  start = time.perf_counter()
  try:
    with quiet.silenced_stderr() if slice_ else contextlib.nullcontext():
      compiled, rows, analytic, mesh = _lower(loop, model_cfg, data_cfg, train_cfg, mesh_cfg, devices, step)
  except ConfigError:  # a configuration problem is already one line
    raise
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    if 'RESOURCE_EXHAUSTED' not in text and 'exceeds available' not in text and 'Ran out of memory' not in text:
      raise
    used = re.findall(r'(\d+(?:\.\d+)?)([GM])', text)
    amount = f'{used[0][0]}{used[0][1]}' if used else 'more than'
    raise ConfigError(f'does not fit: peak per device {amount} > {hbm if hbm else "the available"} GiB HBM on '
                      f'{where} (XLA: {_gist(text)}); try {_hints(model_cfg, mesh_cfg, step)}') from None
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # XLA's cost is one partition's; train and eval split distinct work over every device, while generate's
  # single row is replicated over the batch axes, so its per-device count is the step's.
  xla = float((cost or {}).get('flops', 0.0)) * (len(devices) if step != 'generate' else 1)
  return Report(topology, len(devices), kind, hbm, mesh, step, rows, mem.argument_size_in_bytes,
                mem.output_size_in_bytes, mem.alias_size_in_bytes, mem.temp_size_in_bytes,
                mem.generated_code_size_in_bytes, xla, analytic, seconds)


def _gist(text: str) -> str:
  line = next((l for l in text.splitlines() if 'RESOURCE_EXHAUSTED' in l or 'exceeds' in l), text.splitlines()[0])
  return line.strip()[:200]


def _lower(loop, model_cfg, data_cfg, train_cfg, mesh_cfg, devices, step):
  """(compiled, rows, analytic FLOPs per step, mesh shape) of one step, from abstract shapes only."""
  import jax  # pylint: disable=import-outside-toplevel

  from block_recurrent import flops  # pylint: disable=import-outside-toplevel
  s = loop.setup(model_cfg, data_cfg, train_cfg, mesh_cfg, devices=devices)
  n = model_cfg.segment_length
  if step == 'generate':
    return _lower_generate(s, model_cfg) + (dict(s.mesh.shape),)
  rows = data_cfg.batch_size if step == 'train' else s.eval_batch
  shardings = s.batch_sh if step == 'train' else s.eval_batch_sh
  shapes = {'inputs': ((rows, n), 'int32'), 'targets': ((rows, n), 'int32'), 'mask': ((rows, n), 'bool'),
            'start': ((rows,), 'bool'), 'num_bytes': ((rows,), 'int32')}
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k]) for k, (shape, dtype) in shapes.items()}
  program = loop.train_program(s, model_cfg) if step == 'train' else loop.eval_program(s)
  per_token = flops.train_flops_per_token(model_cfg) if step == 'train' else flops.forward_flops_per_token(model_cfg)
  return program.lower(s.target, batch).compile(), rows, per_token * rows * n, dict(s.mesh.shape)


def _lower_generate(s, model_cfg):
  """The per-token step of brt-generate (sample, then one token through the token form) for one row."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel

  from block_recurrent import flops, generation, sharding  # pylint: disable=import-outside-toplevel
  from block_recurrent.model import factory, prefill  # pylint: disable=import-outside-toplevel
  abstract = nnx.eval_shape(lambda: factory.build(model_cfg, nnx.Rngs(0)))
  graphdef, params = nnx.split(abstract)
  params = jax.tree.map(lambda p, sh: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=sh), params,
                        s.state_sh.params)
  def fresh_state():
    model = factory.build(model_cfg, nnx.Rngs(0))
    return prefill.fresh_state(model, 1)

  state = jax.eval_shape(fresh_state)
  state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state,
                       sharding.carry_shardings(s.mesh, state))
  replicated = jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec())
  logits = jax.ShapeDtypeStruct((1, model_cfg.vocab_size), jnp.float32, sharding=replicated)
  key = jax.eval_shape(lambda: jax.random.key(0))
  _, next_token = generation._programs(graphdef, 1.0, 0, 1.0)  # pylint: disable=protected-access
  compiled = next_token.lower(params, state, logits, key).compile()
  return compiled, 1, flops.forward_flops_per_token(model_cfg)


def describe(r: Report, model_cfg) -> list[str]:
  gib = lambda b: f'{b / GIB:.3f} GiB'
  mesh = ' x '.join(f'{k}={v}' for k, v in r.mesh.items())
  hbm = f', {r.hbm_gib:g} GiB HBM each' if r.hbm_gib else ''
  what = (f'{r.rows} x {model_cfg.segment_length} tokens' if r.step != 'generate' else '1 row, one token')
  ratio = f' ({r.xla_flops / r.analytic_flops:.2f}x)' if r.analytic_flops else ''
  capacity = f'{r.hbm_gib:.2f} GiB HBM' if r.hbm_gib else 'this machine\'s memory (not checked)'
  return [
      f'devices: {r.devices} ({r.kind}{hbm})',
      f'mesh: {mesh}',
      f'step: {r.step}, {what}, {model_cfg.dtype} compute',
      f'per device: arguments {gib(r.arguments)}, outputs {gib(r.outputs)} ({gib(r.aliased)} aliased to donated '
      f'arguments), temporaries {gib(r.temporaries)}, code {r.code / 2 ** 20:.1f} MiB',
      f'FLOPs per step: XLA {r.xla_flops:.4g}, analytic {r.analytic_flops:.4g}{ratio}',
      f'compile: {r.compile_seconds:.1f} s',
      f'peak per device: {r.peak / GIB:.2f} GiB of {capacity}: {"fits" if r.fits else "does not fit"}',
  ]
