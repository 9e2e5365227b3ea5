"""The flat training loop, read top to bottom: setup, restore, then step / log / evaluate / checkpoint.

Resume order: the newest complete checkpoint in workdir/checkpoints restores the whole train state and
the data cursor; otherwise --load_dir's parameters (fine-tuning) or a fresh initialisation.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import configs, flops, peak as peak_lib, sharding
from block_recurrent.train import distributed
from block_recurrent.data import segments, tasks
from block_recurrent.model import linear_lm
from block_recurrent.train import checkpoint as ckpt_lib, optim, preemption, step as step_lib, stream, summaries
from block_recurrent.train import workdir as workdir_lib

LN2 = math.log(2.0)


def _mfu_peak(workdir, train_cfg: configs.TrainConfig, echo) -> float:
  """The FLOP/s MFU is stated against (block_recurrent/peak.py), kept in DIR/peak.json so that a resumed
  run reports against the same number."""
  device = jax.devices()[0]
  record = workdir / 'peak.json'
  if train_cfg.peak_flops <= 0 and record.exists():
    saved = json.loads(record.read_text())
    if saved.get('device_kind') == device.device_kind:
      echo(f"MFU against {saved['flops'] / 1e9:,.0f} GFLOP/s ({saved['how']}, kept in {record})")
      return float(saved['flops'])
  value, how = peak_lib.peak_flops(device.device_kind, device.platform, train_cfg.peak_flops)
  if jax.process_index() == 0:
    record.write_text(json.dumps({'flops': value, 'how': how, 'device_kind': device.device_kind}) + '\n')
  echo(f'MFU against {value / 1e9:,.0f} GFLOP/s ({how})')
  return value


def _batch_arrays(batch: segments.Batch) -> dict:
  return {'inputs': batch.inputs, 'targets': batch.targets, 'mask': batch.mask,
          'start': batch.start_of_sequence, 'num_bytes': batch.num_bytes.astype(np.int32)}


def _summary(sums: dict) -> dict:
  tokens, nats = max(sums.get('tokens', 0.0), 1.0), sums.get('nll_sum', 0.0)
  return {'loss': nats / tokens, 'bits_per_token': nats / tokens / LN2,
          'bits_per_byte': nats / LN2 / max(sums.get('bytes', 0.0), 1.0),
          'perplexity': math.exp(min(nats / tokens, 50)), 'accuracy': sums.get('correct', 0.0) / tokens}


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
  abstract_model = nnx.eval_shape(lambda: linear_lm.build(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(mesh, abstract_params)

  def init(seed=train_cfg.seed):
    model = linear_lm.build(model_cfg, nnx.Rngs(params=seed))
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


def _put(arrays: dict, shardings: dict) -> dict:
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in arrays.items()}


def train_program(s: Setup, model_cfg: configs.ModelConfig, inject_nonfinite: tuple[int, ...] = ()):
  """The jitted train step with the setup's shardings (state donated); inject_nonfinite: steps whose
  gradients are made NaN (TrainConfig.inject_nonfinite_steps, fault injection)."""
  def step(state, batch):
    with jax.sharding.use_abstract_mesh(s.mesh.abstract_mesh):  # layer-boundary constraints see the mesh
      return step_lib.train_step(s.graphdef, s.tx, s.schedule, state, batch, dropout=model_cfg.dropout_rate > 0,
                                 inject_nonfinite=inject_nonfinite)

  return jax.jit(step, in_shardings=(s.state_sh, s.batch_sh), out_shardings=(s.state_sh, None), donate_argnums=0)


def eval_program(s: Setup):
  def step(state, batch):
    with jax.sharding.use_abstract_mesh(s.mesh.abstract_mesh):
      return step_lib.eval_step(s.graphdef, state, batch)

  return jax.jit(step, in_shardings=(s.state_sh, s.eval_batch_sh), out_shardings=(s.state_sh, None), donate_argnums=0)


def evaluate(s: Setup, eval_fn, state: step_lib.TrainState, docs, segment_length: int, max_segments: int = 0,
             per_token: Callable | None = None, stop: Callable[[], bool] | None = None):
  """Streams whole documents through eval_batch lanes with a fresh eval carry, carried across every
  segment of every document; returns the state and the summary (bits per byte/token, ...).

  per_token(doc_id, first_position, targets, nll_nats) is called for each lane's real tokens of each
  segment, in order, for scoring files; memory stays that of one segment however long the documents.
  stop(): polled every segment (a preemption signal); when it holds on any process, evaluation ends early
  and the summary says interrupted=True."""
  # A process may hold no document of a small split (one book over two hosts): it feeds padding rows.
  eval_batcher = (segments.DocumentBatcher(docs, batch_size=s.eval_batch // jax.process_count(),
                                           segment_length=segment_length, num_epochs=1) if len(docs) else iter(()))
  state = _fresh_eval_carry(state)
  lanes = s.eval_batch // jax.process_count()
  sums, positions, interrupted = {}, [0] * lanes, False
  for i in itertools.count():
    if stop is not None and distributed.any_true(stop()):
      interrupted = True
      break
    batch = next(eval_batcher, None)
    if (max_segments and i >= max_segments) or distributed.all_true(batch is None):
      break  # every process agrees: each runs the same number of steps
    if batch is None:
      batch = stream.padding_batch(lanes, segment_length)
    arrays = _batch_arrays(batch)
    arrays['start'] = arrays['start'] | (i == 0)  # a fresh eval carry: every lane starts clean
    state, stats = eval_fn(state, _put(arrays, s.eval_batch_sh))
    token_nll = stats.pop('token_nll')
    for k, v in stats.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    if per_token is not None:
      nll = np.asarray(jax.device_get(token_nll))
      for lane, doc_id in enumerate(batch.doc_ids):
        if batch.start_of_sequence[lane]:
          positions[lane] = 0
        real = batch.mask[lane]
        if doc_id >= 0 and real.any():
          per_token(int(doc_id), positions[lane], batch.targets[lane][real], nll[lane][real])
          positions[lane] += int(real.sum())
  # Fresh again on return: the saved training state never depends on whether (or how far) an evaluation ran,
  # so a run preempted during one resumes to the uninterrupted run's state, bitwise.
  return _fresh_eval_carry(state), dict(_summary(sums), tokens=sums.get('tokens', 0.0),
                                        bytes=sums.get('bytes', 0.0), interrupted=interrupted)


def _fresh_eval_carry(state: step_lib.TrainState) -> step_lib.TrainState:
  return state._replace(eval_carry=jax.tree.map(jnp.zeros_like, state.eval_carry))


def train(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig, train_cfg: configs.TrainConfig,
          mesh_cfg: configs.MeshConfig, workdir: str, *, load_dir: str | None = None,
          reset_optimizer: bool = False, config_text: str = '', echo=print) -> dict:
  """Trains in workdir (resuming its newest sound checkpoint), holding the workdir's lock throughout."""
  s = setup(model_cfg, data_cfg, train_cfg, mesh_cfg)
  workdir = ckpt_lib.path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise configs.ConfigError(f'cannot write to workdir {workdir}: {e.strerror}') from None
  lock = workdir_lib.Lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _train(s, model_cfg, data_cfg, train_cfg, workdir, load_dir, reset_optimizer, config_text, echo)


def _train(s: Setup, model_cfg, data_cfg, train_cfg, workdir, load_dir, reset_optimizer, config_text, echo) -> dict:
  # --- setup --------------------------------------------------------------------------------------
  pid, pcount = jax.process_index(), jax.process_count()
  validation = tasks.documents(data_cfg.task, 'validation', data_dir=data_cfg.data_dir,
                               spm_path=data_cfg.spm_path, process_index=pid, process_count=pcount)

  # --- restore --------------------------------------------------------------------------------------
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints', keep=train_cfg.keep_checkpoints,
                                       every=train_cfg.checkpoint_every)
  restored = workdir_lib.restore(checkpointer, s.target, workdir, (model_cfg, data_cfg, train_cfg))
  first_step, cursor = 0, None
  if restored is not None:
    first_step, state, cursor = restored
    cursor = stream.sharded_cursor(cursor)
  batchers = stream.train_batchers(data_cfg, model_cfg.segment_length, cursor)
  try:  # only once the checkpoints (if any) fit this config: a refused resume keeps the old config.gin
    if jax.process_index() == 0:
      kept = workdir_lib.record_config(workdir, config_text, first_step)
      if kept:
        echo(f'the config differs from the one this run was trained with: that one is kept as {kept}')
  except OSError as e:
    raise configs.ConfigError(f'cannot write to workdir {workdir}: {e.strerror}') from None
  if restored is not None:
    echo(f'resumed from {checkpointer.directory}/{first_step}')
    if load_dir:
      echo(f'--load_dir {load_dir}' + (' and --reset_optimizer' if reset_optimizer else '') + ' not used: '
           'they only start a workdir that has no checkpoint yet, and this one resumes its own')
  else:
    state = jax.jit(s.init, out_shardings=s.state_sh)()
    if load_dir:
      state = _load_parameters(s, state, load_dir, reset_optimizer, echo)

  train_fn = train_program(s, model_cfg, train_cfg.inject_nonfinite_steps)
  eval_fn = eval_program(s)

  # --- loop ---------------------------------------------------------------------------------------
  peak = _mfu_peak(workdir, train_cfg, echo)
  flops_per_token = flops.train_flops_per_token(model_cfg)
  writer = summaries.MetricsWriter(workdir, resumed_at=first_step if restored is not None else None)
  step_now = int(state.step)
  echo(f'training {data_cfg.task} for {train_cfg.num_steps} steps from step {step_now}: workdir {workdir}')
  sums, t_log, t0, last, timed_tokens = {}, time.perf_counter(), time.perf_counter(), {}, 0.0
  clock = _TrainClock()
  skips_in_row, rollbacks_left, last_saved, stopped = 0, train_cfg.nonfinite_rollbacks, step_now, None
  blind = False  # after a rollback: the restored carry belongs to data that was skipped
  with preemption.handling() as signals:
    while step_now < train_cfg.num_steps:
      parts = [next(b, None) for b in batchers.values()]
      if not distributed.all_true(all(p is not None for p in parts)):  # every process stops together
        echo('the training data ran out (num_epochs reached)')
        break
      arrays = _batch_arrays(stream.concat(parts))
      if blind:  # every lane starts its context afresh rather than reading a stale carry
        arrays['start'], blind = np.ones_like(arrays['start']), False
      state, metrics = train_fn(state, _put(arrays, s.batch_sh))
      if not clock.started:
        jax.block_until_ready(metrics)
        echo(f'first step done {time.perf_counter() - t0:.1f}s after the loop started (compilation included)')
        t_log, timed_tokens = time.perf_counter(), -float(metrics['tokens'])  # rates exclude compilation
        clock.start()
      values = {k: float(v) for k, v in metrics.items()}
      done = step_now + 1
      sums['skipped_steps'] = sums.get('skipped_steps', 0.0) + values['skipped']
      for k in ('learning_rate', 'grad_norm'):
        sums[k] = values[k]
      if values['skipped']:
        skips_in_row += 1
        timed_tokens += values['tokens']
        echo(f'step {done}: non-finite loss ({values["loss"]:.4g}) or gradient norm ({values["grad_norm"]:.4g}): '
             f'update skipped ({skips_in_row} in a row)')
      else:
        skips_in_row = 0
        for k in ('nll_sum', 'tokens', 'correct', 'bytes'):
          sums[k] = sums.get(k, 0.0) + values[k]
      if done % max(train_cfg.log_every, 1) == 0 or done == train_cfg.num_steps:
        elapsed = time.perf_counter() - t_log
        rate = (sums.get('tokens', 0.0) + timed_tokens) / max(elapsed, 1e-9)
        last = dict(learning_rate=sums['learning_rate'], tokens_per_s=rate,
                    grad_norm=sums['grad_norm'] if math.isfinite(sums['grad_norm']) else None,  # JSON has no NaN
                    model_flops_per_token=flops_per_token, mfu=rate * flops_per_token / peak,
                    skipped_steps=sums['skipped_steps'], train_seconds=clock.seconds())
        eta = (time.perf_counter() - t0) / max(done - first_step, 1) * (train_cfg.num_steps - done)
        if 'tokens' in sums:  # some step of this interval was not skipped
          last.update(_summary(sums))
          echo(f'step {done:6d}/{train_cfg.num_steps}  loss {last["loss"]:.3f}  bits/byte {last["bits_per_byte"]:.3f}  '
               f'{rate:,.0f} tokens/s  MFU {100 * last["mfu"]:.1f}%  ETA {eta:.0f}s'
               + (f'  skipped {sums["skipped_steps"]:.0f}' if sums['skipped_steps'] else ''))
        else:
          echo(f'step {done:6d}/{train_cfg.num_steps}  every step since the last line skipped (non-finite)')
        writer.write('train', done, last)
        sums, t_log, timed_tokens = {}, time.perf_counter(), 0.0
      if skips_in_row >= train_cfg.max_consecutive_skips:
        first_bad = done - skips_in_row + 1
        # The checkpoint of step first_bad - 1 produced the first non-finite step (a finite update can push the
        # parameters far enough): it and any newer one are moved aside, so that a rerun or a rollback resumes
        # from the newest good one and the steps after it can be saved again.
        for bad, moved in checkpointer.set_aside_from(first_bad - 1, 'diverged'):
          echo(f'checkpoint {checkpointer.directory}/{bad} led to non-finite steps: moved to {moved}')
        back = max(checkpointer.steps(), default=None)
        if rollbacks_left and back is not None:
          rollbacks_left -= 1
          back, state, _ = checkpointer.restore(s.target, back)  # the data cursor stays: the batches since are skipped
          echo(f'{skips_in_row} non-finite steps in a row (to step {done}): rolled back to '
               f'{checkpointer.directory}/{back}, skipping the data read since ({rollbacks_left} rollbacks left); '
               'every lane restarts its context (the restored carry belongs to the skipped data)')
          step_now, skips_in_row, last_saved, blind = back, 0, back, True
          continue
        writer.close()
        checkpointer.close()
        where = (f'the last good checkpoint is {checkpointer.directory}/{back}' if back is not None
                 else 'no good checkpoint was written before it')
        raise TrainingStopped(
            f'{skips_in_row} consecutive non-finite steps ({first_bad} to {done}): training stopped at step {done}; '
            f'{where}. Lower TrainConfig.learning_rate, set TrainConfig.grad_clip or TrainConfig.nonfinite_rollbacks, '
            'then rerun to ' + ('resume from it' if back is not None else 'start afresh'))
      if train_cfg.eval_every and done % train_cfg.eval_every == 0 and done < train_cfg.num_steps:
        with clock.paused():
          state, ev = evaluate(s, eval_fn, state, validation, model_cfg.segment_length, train_cfg.eval_segments,
                               stop=signals.pending)
        if not ev['interrupted']:
          echo(f'eval at step {done}: bits/byte {ev["bits_per_byte"]:.3f}  bits/token {ev["bits_per_token"]:.3f}')
          writer.write('validation', done, dict(ev, train_seconds=clock.seconds()))
      over_time = bool(train_cfg.max_train_seconds) and clock.seconds() >= train_cfg.max_train_seconds
      stop = distributed.any_true(signals.pending() or over_time)
      if skips_in_row == 0 and (done % max(train_cfg.checkpoint_every, 1) == 0 or done == train_cfg.num_steps
                                or stop):
        checkpointer.save(done, state, stream.cursor(batchers), force=True if stop else done == train_cfg.num_steps)
        last_saved = done
      step_now = done
      if stop:  # every process agrees on why: a signal anywhere is a preemption
        stopped = (signals.received or 'a signal') if distributed.any_true(signals.pending()) else 'time'
        break
    checkpointer.wait()
    if stopped and stopped != 'time':  # preempted: the checkpoint is written, no final evaluation
      writer.close()
      checkpointer.close()
      echo(f'received {stopped}: stopped after step {step_now}, checkpoint {checkpointer.directory}/{last_saved} '
           'written; rerun the same command to resume')
      return {'train': last, 'validation': None, 'state': state, 'stopped': stopped}
    if stopped == 'time':
      echo(f'TrainConfig.max_train_seconds={train_cfg.max_train_seconds:g} reached after step {step_now}')
    with clock.paused():
      state, ev = evaluate(s, eval_fn, state, validation, model_cfg.segment_length, train_cfg.eval_segments,
                           stop=signals.pending)
  if not ev['interrupted']:
    writer.write('validation', int(state.step), dict(ev, train_seconds=clock.seconds()))
  writer.close()
  checkpointer.close()
  echo(f'validation bits/byte {ev["bits_per_byte"]:.4f}  bits/token {ev["bits_per_token"]:.4f}'
       + ('  (interrupted: partial)' if ev['interrupted'] else ''))
  echo(f'outputs: {workdir}/metrics.jsonl, {workdir}/tensorboard, {workdir}/config.gin, {checkpointer.directory}')
  return {'train': last, 'validation': ev, 'state': state, 'stopped': stopped}


class TrainingStopped(RuntimeError):
  """The run cannot go on (repeated numerical faults); the message names the step and the last good
  checkpoint. brt-train prints it as one line and exits with status 1."""


class _TrainClock:
  """Seconds spent training, from the end of the first (compiling) step, evaluation left out."""

  def __init__(self):
    self.started, self._t0, self._paused = False, 0.0, 0.0

  def start(self):
    self.started, self._t0 = True, time.perf_counter()

  def seconds(self) -> float:
    return time.perf_counter() - self._t0 - self._paused if self.started else 0.0

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - t


def _load_parameters(s: Setup, state, load_dir: str, reset_optimizer: bool, echo):
  """--load_dir: another run's newest parameters (and optimiser state unless reset); step 0, fresh carries."""
  source = ckpt_lib.path(load_dir) / 'checkpoints'
  if not source.is_dir():
    raise configs.ConfigError(f'--load_dir {load_dir} has no checkpoints folder: point it at a brt-train workdir')
  loader = ckpt_lib.Checkpointer(source, keep=1000, every=1, create=False)
  loaded = loader.restore(s.target)
  loader.close()
  if loaded is None:
    raise configs.ConfigError(f'--load_dir {load_dir} holds no complete checkpoint')
  state = state._replace(params=loaded[1].params,
                         opt_state=state.opt_state if reset_optimizer else loaded[1].opt_state)
  echo(f'started from the parameters of {source}/{loaded[0]}' + (' (optimiser reset)' if reset_optimizer else ''))
  return state
