"""The training loop, read top to bottom in sections: setup, restore, then data / step / log / non-finite
policy / evaluate / checkpoint each step, and a final evaluation. All of training's I/O is here; the
programs it runs are built in programs.py, and its arithmetic and decisions are the pure functions of
loop_policy.py.

Resume order: the newest complete checkpoint in workdir/checkpoints restores the whole train state and
the data cursor; otherwise --load_dir's parameters (fine-tuning) or a fresh initialisation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from block_recurrent import configs, flops, peak as peak_lib
from block_recurrent.data import segments, tasks
from block_recurrent.train import checkpoint as ckpt_lib, distributed, preemption, step as step_lib, stream, summaries
from block_recurrent.train import loop_policy as policy, workdir as workdir_lib
from block_recurrent.train.programs import (Setup, batch_arrays, diagnostics_program, eval_program, has_diagnostics, put,
                                            setup, train_program)


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


def evaluate(s: Setup, eval_fn, state: step_lib.TrainState, docs, segment_length: int, max_segments: int = 0,
             per_token: Callable | None = None, stop: Callable[[], bool] | None = None,
             diagnose: Callable | None = None):
  """Streams whole documents through eval_batch lanes with a fresh eval carry, carried across every
  segment of every document; returns the state and the summary (bits per byte/token, ...).

  per_token(doc_id, first_position, targets, nll_nats) is called for each lane's real tokens of each
  segment, in order, for scoring files; memory stays that of one segment however long the documents.
  stop(): polled every segment (a preemption signal); when it holds on any process, evaluation ends early
  and the summary says interrupted=True. diagnose(state, batch) (programs.diagnostics_program) runs on the
  first segment, from the fresh eval carry; its scalars join the summary."""
  # A process may hold no document of a small split (one book over two hosts): it feeds padding rows.
  eval_batcher = (segments.DocumentBatcher(docs, batch_size=s.eval_batch // jax.process_count(),
                                           segment_length=segment_length, num_epochs=1) if len(docs) else iter(()))
  state = _fresh_eval_carry(state)
  lanes = s.eval_batch // jax.process_count()
  sums, positions, interrupted, diagnostics = {}, [0] * lanes, False, {}
  for i in itertools.count():
    if stop is not None and distributed.any_true(stop()):
      interrupted = True
      break
    batch = next(eval_batcher, None)
    if (max_segments and i >= max_segments) or distributed.all_true(batch is None):
      break  # every process agrees: each runs the same number of steps
    if batch is None:
      batch = stream.padding_batch(lanes, segment_length)
    arrays = batch_arrays(batch)
    arrays['start'] = arrays['start'] | (i == 0)  # a fresh eval carry: every lane starts clean
    if diagnose is not None and i == 0:
      diagnostics = {k: float(v) for k, v in diagnose(state, put(arrays, s.eval_batch_sh)).items()}
    state, stats = eval_fn(state, put(arrays, s.eval_batch_sh))
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
  return _fresh_eval_carry(state), dict(policy.summary(sums), tokens=sums.get('tokens', 0.0),
                                        bytes=sums.get('bytes', 0.0), interrupted=interrupted, **diagnostics)


def _fresh_eval_carry(state: step_lib.TrainState) -> step_lib.TrainState:
  return state._replace(eval_carry=jax.tree.map(jnp.zeros_like, state.eval_carry))


def train(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig, train_cfg: configs.TrainConfig,
          mesh_cfg: configs.MeshConfig, workdir: str, *, load_dir: str | None = None,
          reset_optimizer: bool = False, config_text: str = '', echo=print) -> dict:
  """Trains in workdir (resuming its newest sound checkpoint), holding the workdir's lock throughout."""
  s = setup(model_cfg, data_cfg, train_cfg, mesh_cfg)
  workdir = ckpt_lib.path(workdir)
  workdir_lib.create(workdir)
  lock = workdir_lib.Lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _train(s, model_cfg, data_cfg, train_cfg, workdir, load_dir, reset_optimizer, config_text, echo)


class _Env(NamedTuple):
  """What the loop works with, fixed once training starts."""
  s: Setup
  model_cfg: configs.ModelConfig
  train_cfg: configs.TrainConfig
  train_fn: Callable
  eval_fn: Callable
  diagnose: Callable | None  # programs.diagnostics_program, for models that have diagnostics
  batchers: dict
  validation: Any  # the validation documents
  checkpointer: ckpt_lib.Checkpointer
  writer: summaries.MetricsWriter
  clock: _TrainClock
  flops_per_token: float
  peak: float  # FLOP/s
  echo: Callable[[str], None]


@dataclasses.dataclass
class _Progress:
  """What the loop carries from one step to the next, besides the train state."""
  step: int  # steps done
  first_step: int  # the step this run (re)started from: the ETA counts the steps since
  rollbacks_left: int
  last_saved: int
  skips_in_row: int = 0  # consecutive non-finite steps, each update skipped
  blind: bool = False  # after a rollback: the restored carry belongs to data that was skipped
  sums: dict = dataclasses.field(default_factory=dict)  # the log interval's metrics (accumulate)
  timed_tokens: float = 0.0  # tokens the interval's rate counts beyond sums['tokens'] (tokens_per_second)
  t_log: float = 0.0  # when the interval's timing began
  t0: float = 0.0  # when the loop began
  last: dict = dataclasses.field(default_factory=dict)  # the last train row written


def _train(s: Setup, model_cfg, data_cfg, train_cfg, workdir, load_dir, reset_optimizer, config_text, echo) -> dict:
  # --- setup: validation documents, the checkpointer ----------------------------------------------------
  validation = tasks.documents(data_cfg.task, 'validation', data_dir=data_cfg.data_dir, spm_path=data_cfg.spm_path,
                               process_index=jax.process_index(), process_count=jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(workdir_lib.checkpoints(workdir), keep=train_cfg.keep_checkpoints,
                                       every=train_cfg.checkpoint_every)
  with _closing(checkpointer):
    # --- restore: the workdir's newest checkpoint, else --load_dir's parameters, else a fresh start -------
    state, resumed_at, batchers = _restore(s, checkpointer, model_cfg, data_cfg, train_cfg, workdir, load_dir,
                                           reset_optimizer, config_text, echo)
    train_fn, eval_fn = train_program(s, model_cfg, train_cfg.inject_nonfinite_steps), eval_program(s)
    peak = _mfu_peak(workdir, train_cfg, echo)
    with _closing(summaries.MetricsWriter(workdir, resumed_at=resumed_at)) as writer:
      diagnose = diagnostics_program(s) if has_diagnostics(model_cfg) else None
      env = _Env(s, model_cfg, train_cfg, train_fn, eval_fn, diagnose, batchers, validation, checkpointer, writer,
                 _TrainClock(), flops.train_flops_per_token(model_cfg), peak, echo)
      progress = _Progress(step=int(state.step), first_step=resumed_at or 0,
                           rollbacks_left=train_cfg.nonfinite_rollbacks, last_saved=int(state.step))
      echo(f'training {data_cfg.task} for {train_cfg.num_steps} steps from step {progress.step}: workdir {workdir}')
      # --- loop ---------------------------------------------------------------------------------------
      with preemption.handling() as signals:
        state, stopped = _loop(env, progress, state, signals)
        checkpointer.wait()
        ev = None  # after a preemption: the checkpoint is written, no final evaluation
        if stopped in (None, 'time'):
          if stopped == 'time':
            echo(f'TrainConfig.max_train_seconds={train_cfg.max_train_seconds:g} reached after step {progress.step}')
          with env.clock.paused():
            state, ev = evaluate(s, eval_fn, state, validation, model_cfg.segment_length, train_cfg.eval_segments,
                                 stop=signals.pending, diagnose=diagnose)
      if ev is not None and not ev['interrupted']:
        writer.write('validation', int(state.step), dict(ev, train_seconds=env.clock.seconds()))
  # --- report: once the metrics are flushed and the saves finished --------------------------------------
  if ev is None:
    echo(f'received {stopped}: stopped after step {progress.step}, checkpoint {checkpointer.directory}/'
         f'{progress.last_saved} written; rerun the same command to resume')
  else:
    echo(f'validation bits/byte {ev["bits_per_byte"]:.4f}  bits/token {ev["bits_per_token"]:.4f}'
         + ('  (interrupted: partial)' if ev['interrupted'] else ''))
    echo(f'outputs: {workdir}/metrics.jsonl, {workdir}/tensorboard, {workdir}/config.gin, {checkpointer.directory}')
  return {'train': progress.last, 'validation': ev, 'state': state, 'stopped': stopped}


def _restore(s: Setup, checkpointer, model_cfg, data_cfg, train_cfg, workdir, load_dir, reset_optimizer, config_text,
             echo):
  """(train state, the step resumed from or None, the train batchers at their cursor).

  config.gin is written only once the checkpoints (if any) fit this config: a refused resume keeps the old."""
  restored = workdir_lib.restore(checkpointer, s.target, workdir, (model_cfg, data_cfg, train_cfg))
  resumed_at, cursor = (None, None) if restored is None else (restored[0], stream.sharded_cursor(restored[2]))
  batchers = stream.train_batchers(data_cfg, model_cfg.segment_length, cursor)
  if jax.process_index() == 0:
    kept = workdir_lib.record_config(workdir, config_text, resumed_at or 0)
    if kept:
      echo(f'the config differs from the one this run was trained with: that one is kept as {kept}')
  if restored is not None:
    echo(f'resumed from {checkpointer.directory}/{resumed_at}')
    if load_dir:
      echo(f'--load_dir {load_dir}' + (' and --reset_optimizer' if reset_optimizer else '') + ' not used: '
           'they only start a workdir that has no checkpoint yet, and this one resumes its own')
    return restored[1], resumed_at, batchers
  state = jax.jit(s.init, out_shardings=s.state_sh)()
  if load_dir:
    state = _load_parameters(s, state, load_dir, reset_optimizer, echo)
  return state, None, batchers


def _loop(env: _Env, p: _Progress, state, signals):
  """Steps until TrainConfig.num_steps, the end of the data, a stop (a signal anywhere, or the time limit) or
  a streak of non-finite steps past rolling back; returns (state, None, 'time' or the signal's name)."""
  train_cfg, echo = env.train_cfg, env.echo
  p.t0 = p.t_log = time.perf_counter()
  while p.step < train_cfg.num_steps:
    # --- data: every process stops together when any runs out ---------------------------------------
    parts = [next(b, None) for b in env.batchers.values()]
    if not distributed.all_true(all(part is not None for part in parts)):
      echo('the training data ran out (num_epochs reached)')
      break
    arrays = batch_arrays(stream.concat(parts))
    if p.blind:  # every lane starts its context afresh rather than reading a stale carry
      arrays['start'], p.blind = np.ones_like(arrays['start']), False
    # --- step ---------------------------------------------------------------------------------------
    state, metrics = env.train_fn(state, put(arrays, env.s.batch_sh))
    if not env.clock.started:
      _first_step_timed(env, p, metrics)
    values = {k: float(v) for k, v in metrics.items()}
    done = p.step + 1
    p.sums = policy.accumulate(p.sums, values)
    p.skips_in_row = p.skips_in_row + 1 if values['skipped'] else 0
    if values['skipped']:
      p.timed_tokens += values['tokens']
      echo(f'step {done}: non-finite loss ({values["loss"]:.4g}) or gradient norm ({values["grad_norm"]:.4g}): '
           f'update skipped ({p.skips_in_row} in a row)')
    # --- log ----------------------------------------------------------------------------------------
    if policy.log_due(done, train_cfg):
      _log(env, p, done)
    # --- non-finite policy: roll back to the newest good checkpoint, or stop --------------------------
    if p.skips_in_row >= train_cfg.max_consecutive_skips:
      state = _roll_back(env, p, done)
      continue
    # --- evaluate -----------------------------------------------------------------------------------
    if policy.eval_due(done, train_cfg):
      state = _evaluate_midway(env, p, state, done, signals)
    # --- checkpoint, then stop if asked ---------------------------------------------------------------
    over_time = policy.over_time(env.clock.seconds(), train_cfg.max_train_seconds)
    stop = distributed.any_true(signals.pending() or over_time)
    save, force = policy.save_due(done, train_cfg, p.skips_in_row, stop)
    if save:
      with _untimed(p):
        env.checkpointer.save(done, state, stream.cursor(env.batchers), force=force)
      p.last_saved = done
    p.step = done
    if stop:  # every process agrees on why: a signal anywhere is a preemption
      return state, (signals.received or 'a signal') if distributed.any_true(signals.pending()) else 'time'
  return state, None


def _first_step_timed(env: _Env, p: _Progress, metrics) -> None:
  """The first step compiles: rates and the training clock start once it is done."""
  jax.block_until_ready(metrics)
  env.echo(f'first step done {time.perf_counter() - p.t0:.1f}s after the loop started (compilation included)')
  p.t_log, p.timed_tokens = time.perf_counter(), -float(metrics['tokens'])
  env.clock.start()


def _log(env: _Env, p: _Progress, done: int) -> None:
  """One log line and one train row for the interval since the last; the interval starts again."""
  rate = policy.tokens_per_second(p.sums, p.timed_tokens, time.perf_counter() - p.t_log)
  row = policy.train_row(p.sums, rate, env.flops_per_token, env.peak, env.clock.seconds())
  eta = policy.eta_seconds(time.perf_counter() - p.t0, done - p.first_step, env.train_cfg.num_steps - done)
  env.echo(policy.log_line(done, env.train_cfg.num_steps, row, eta))
  env.writer.write('train', done, row)
  p.last, p.sums, p.t_log, p.timed_tokens = row, {}, time.perf_counter(), 0.0


def _roll_back(env: _Env, p: _Progress, done: int):
  """After max_consecutive_skips non-finite steps: the checkpoints that led there are moved aside and the
  newest good one restored (the data cursor stays: the batches since are skipped); TrainingStopped when no
  rollback or good checkpoint is left."""
  checkpointer, first_bad = env.checkpointer, policy.streak_start(done, p.skips_in_row)
  # The checkpoint of step first_bad - 1 produced the first non-finite step (a finite update can push the
  # parameters far enough): it and any newer one are moved aside, so that a rerun or a rollback resumes from
  # the newest good one and the steps after it can be saved again.
  for bad, moved in checkpointer.set_aside_from(first_bad - 1, 'diverged'):
    env.echo(f'checkpoint {checkpointer.directory}/{bad} led to non-finite steps: moved to {moved}')
  good = checkpointer.steps()
  back = policy.rollback_to(good, p.rollbacks_left)
  if back is None:
    raise TrainingStopped(policy.stopped_message(p.skips_in_row, first_bad, done, checkpointer.directory, good))
  p.rollbacks_left -= 1
  back, state, _ = checkpointer.restore(env.s.target, back)
  env.echo(f'{p.skips_in_row} non-finite steps in a row (to step {done}): rolled back to '
           f'{checkpointer.directory}/{back}, skipping the data read since ({p.rollbacks_left} rollbacks left); '
           'every lane restarts its context (the restored carry belongs to the skipped data)')
  p.step, p.skips_in_row, p.last_saved, p.blind = back, 0, back, True
  return state


@contextlib.contextmanager
def _untimed(p: _Progress):
  """Time that is not training (an evaluation, a checkpoint save) is left out of the log interval's
  tokens/s: the interval's start moves on by as much."""
  t = time.perf_counter()
  try:
    yield
  finally:
    p.t_log += time.perf_counter() - t


def _evaluate_midway(env: _Env, p: _Progress, state, done: int, signals):
  with env.clock.paused(), _untimed(p):
    state, ev = evaluate(env.s, env.eval_fn, state, env.validation, env.model_cfg.segment_length,
                         env.train_cfg.eval_segments, stop=signals.pending, diagnose=env.diagnose)
  if not ev['interrupted']:
    env.echo(f'eval at step {done}: bits/byte {ev["bits_per_byte"]:.3f}  bits/token {ev["bits_per_token"]:.3f}')
    env.writer.write('validation', done, dict(ev, train_seconds=env.clock.seconds()))
  return state


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


@contextlib.contextmanager
def _closing(resource):
  """Closes resource (the metrics writer; the checkpointer, after the saves in flight) however the block ends.
  While an error propagates, an error from closing is dropped: the first one is what the user sees."""
  try:
    yield resource
  except BaseException:
    with contextlib.suppress(Exception):
      resource.close()
    raise
  resource.close()


def _load_parameters(s: Setup, state, load_dir: str, reset_optimizer: bool, echo):
  """--load_dir: another run's newest parameters (and optimiser state unless reset); step 0, fresh carries."""
  workdir_lib.check_load_dir(load_dir)
  loaded = workdir_lib.read_checkpoint(load_dir, s.target)
  if loaded is None:
    raise configs.ConfigError(f'--load_dir {load_dir} holds no complete checkpoint')
  state = state._replace(params=loaded[1].params,
                         opt_state=state.opt_state if reset_optimizer else loaded[1].opt_state)
  echo(f'started from the parameters of {workdir_lib.checkpoints(load_dir)}/{loaded[0]}'
       + (' (optimiser reset)' if reset_optimizer else ''))
  return state
