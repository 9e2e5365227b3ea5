"""Faults: brt-train killed (SIGKILL) and preempted (SIGTERM) at seeded random moments resumes to exactly
the parameters of a run never interrupted and never leaves an unreadable checkpoint; non-finite gradients
are skipped and reported, and K of them in a row stop the run with a message naming the last good
checkpoint. Every brt-train here is a real process on one CPU device, sharing a compilation cache."""

import json
import signal

import jax
import numpy as np
import pytest

from block_recurrent.train import faults

NUM_STEPS = 16
GIN = ['gin/experiments/tiny/rec_fixed_skip.gin', 'gin/task/pg_mini_bytes.gin']
PARAMS = [f'configs.TrainConfig.num_steps = {NUM_STEPS}', 'configs.TrainConfig.checkpoint_every = 2',
          'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_every = 8',
          'configs.TrainConfig.eval_segments = 2', 'configs.TrainConfig.warmup_steps = 2',
          'configs.DataConfig.batch_size = 2', 'configs.TrainConfig.keep_checkpoints = 2']


def _args(workdir, *extra):
  return ([f'--gin_file={f}' for f in GIN] + [f'--gin_param={p}' for p in PARAMS + list(extra)]
          + [f'--workdir={workdir}'])


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """One CPU device (no fake devices: Orbax then writes one shard) and a shared compilation cache."""
  environment = faults.environment(str(tmp_path_factory.mktemp('jax_cache')))
  environment['XLA_FLAGS'] = '--xla_backend_optimization_level=0'
  return environment


def test_killed_and_preempted_runs_resume_to_the_uninterrupted_parameters(tmp_path, env):
  reference = faults.run_to_end(_args(tmp_path / 'reference'), env)
  assert reference.returncode == 0, reference.stderr[-2000:]

  kinds = [signal.SIGKILL] * 5 + [signal.SIGTERM] * 5
  np.random.default_rng(7).shuffle(kinds)
  # Moments over the first NUM_STEPS - 4 steps: a run resumed near the end can finish before a late moment.
  plan = faults.schedule(seed=7, kinds=kinds, num_steps=NUM_STEPS - 4, max_delay_s=0.25)
  workdir = tmp_path / 'interrupted'
  done, final = faults.run_with_interruptions(_args(workdir), workdir, plan, env)  # raises on an unreadable one
  assert final.returncode == 0, final.stderr[-2000:]
  report = '\n'.join(str(d) for d in done)

  killed = [d for d in done if d.signal == 'SIGKILL']
  assert sum(d.returncode == -signal.SIGKILL for d in killed) >= 4, report  # the kills landed mid-run
  preempted = [d for d in done if d.signal == 'SIGTERM']
  for d in preempted:
    assert d.returncode == 0, report  # a preemption is a clean exit
    if d.stopped_line:  # the signal came before the end: the step it finished is checkpointed
      stopped_after = int(d.stopped_line.split('stopped after step ')[1].split(',')[0])
      assert stopped_after >= d.last_logged and d.checkpoints[-1] == stopped_after, report
    else:  # no stop line only when there was nothing left to stop: the run had already completed
      assert d.checkpoints[-1] == NUM_STEPS, report
  # How many land mid-run depends on the machine's step time (a fast one can finish first): most do.
  assert sum(bool(d.stopped_line) for d in preempted) >= 3, report
  assert any(d.after_step and d.checkpoints for d in done), report

  a, b = faults.saved_state(tmp_path / 'reference', NUM_STEPS), faults.saved_state(workdir, NUM_STEPS)
  assert a['data'] == b['data']  # the data cursor
  leaves_a, leaves_b = jax.tree.leaves(a['state']), jax.tree.leaves(b['state'])
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):  # parameters, optimiser state, RNG, both carries: bitwise
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  leftovers = [p.name for p in (workdir / 'checkpoints').iterdir() if 'tmp' in p.name]
  assert not leftovers, leftovers  # incomplete saves are gone once a newer checkpoint is complete


def test_nonfinite_gradients_are_skipped_then_roll_back_then_stop_the_run(tmp_path, env):
  """NaN gradients at step 3 (one skip), then at 9, 10, 11: K=3 in a row. Checkpoint 8 produced the first
  NaN step, so it is moved aside and the run rolls back to checkpoint 6 once (the data read since is
  skipped); the same steps fail again and, with no rollback left, stop it."""
  workdir = tmp_path / 'nan'
  run = faults.run_to_end(_args(workdir, 'configs.TrainConfig.inject_nonfinite_steps = (3, 9, 10, 11)',
                                'configs.TrainConfig.max_consecutive_skips = 3',
                                'configs.TrainConfig.nonfinite_rollbacks = 1'), env)
  assert run.returncode == 1, run.stderr[-2000:]
  out = run.stdout
  assert 'step 3: non-finite loss' in out and 'update skipped (1 in a row)' in out
  assert 'step 11: non-finite loss' in out and 'update skipped (3 in a row)' in out
  assert 'every lane restarts its context' in out
  rolled = f'3 non-finite steps in a row (to step 11): rolled back to {workdir.resolve()}/checkpoints/6'
  assert out.count(rolled) == 1 and out.count('step 11: non-finite loss') == 2, out[-3000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith('brt-train: error:')]
  assert len(errors) == 1, run.stderr[-2000:]
  assert ('3 consecutive non-finite steps (9 to 11): training stopped at step 11; the last good checkpoint is '
          f'{workdir.resolve()}/checkpoints/6') in errors[0]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r['split'] == 'train']
  first = {r['step']: r for r in train[:11]}
  assert first[3]['skipped_steps'] == 1 and first[4]['skipped_steps'] == 0 and first[2]['skipped_steps'] == 0
  assert 'loss' not in first[10] and first[10]['grad_norm'] is None  # nothing finite to report
  # After the rollback the run went on from step 6 (state.step rewound), and step 9 failed again.
  again = [r for r in train[11:] if r['step'] == 9]
  assert again and again[0]['skipped_steps'] == 1
  # Checkpoint 8 was set aside both times (kept, not deleted); 6 is the newest and all finite.
  aside = sorted(p.name.split('.')[:2] for p in (workdir / 'checkpoints_set_aside').iterdir())
  assert aside == [['8', 'diverged'], ['8', 'diverged']], aside
  saved = faults.saved_state(workdir, 6)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(saved['state'])
             if np.issubdtype(np.asarray(x).dtype, np.floating))
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())[-1] == 6


def test_a_skipped_step_leaves_the_parameters_unchanged():
  """In-process, on the pure step: NaN gradients at step 2 leave params and optimiser state bitwise as
  they were after step 1, count as skipped, and the next step updates again."""
  import jax.numpy as jnp
  from flax import nnx

  import block_recurrent as brt
  from block_recurrent import configs
  from block_recurrent.train import optim, step as step_lib
  import helpers
  cfg = helpers.config('rec_fixed_skip', dropout_rate=0.0)
  model = brt.build_model(config=cfg, seed=0)
  graphdef, params = nnx.split(model)
  train_cfg = configs.TrainConfig(optimizer='adamw', learning_rate=1e-3, schedule='constant', warmup_steps=0)
  tx, schedule = optim.optimizer(train_cfg), optim.schedule(train_cfg)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                              rng=jax.random.key_data(jax.random.key(1)), carry=model.init_carry(2),
                              eval_carry=model.init_carry(2))
  toks = helpers.tokens(0, 2, cfg.segment_length + 1)
  batch = {'inputs': toks[:, :-1], 'targets': toks[:, 1:], 'mask': np.ones(toks[:, 1:].shape, bool),
           'start': np.ones(2, bool), 'num_bytes': np.full(2, cfg.segment_length, np.int32)}
  step = jax.jit(lambda s, b: step_lib.train_step(graphdef, tx, schedule, s, b, dropout=False,
                                                  inject_nonfinite=(2,)))
  one, m1 = step(state, batch)
  two, m2 = step(one, batch)
  three, m3 = step(two, batch)
  assert float(m1['skipped']) == 0 and float(m2['skipped']) == 1 and float(m3['skipped']) == 0
  assert not np.isfinite(float(m2['grad_norm']))
  assert int(two.step) == 2
  for x, y in zip(jax.tree.leaves((one.params, one.opt_state)), jax.tree.leaves((two.params, two.opt_state))):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  moved = [float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(two.params), jax.tree.leaves(three.params))]
  assert max(moved) > 0  # and training goes on
