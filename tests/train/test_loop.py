"""Training: resumed == uninterrupted (bitwise, across processes), sharded step == one device, the eval
carry never leaks into training, and bad input fails cleanly without touching what is saved."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent import configs, sharding
from block_recurrent.main import main as brt_train
from block_recurrent.train import checkpoint, optim, step as step_lib
import helpers

TINY = ['gin/experiments/tiny/rec_fixed_skip.gin', 'gin/task/pg_mini_bytes.gin']
PARAMS = ['configs.TrainConfig.num_steps = 4', 'configs.TrainConfig.checkpoint_every = 2',
          'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_segments = 2',
          'configs.TrainConfig.warmup_steps = 2', 'configs.DataConfig.batch_size = 2']


def _args(workdir, steps=4):
  return ([f'--gin_file={f}' for f in TINY] + [f'--gin_param={p}' for p in PARAMS]
          + [f'--gin_param=configs.TrainConfig.num_steps = {steps}', f'--workdir={workdir}'])


def _train_losses(workdir):
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in rows if r['split'] == 'train'}


def _checkpoint_leaves(workdir, step):
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', keep=5, every=1)
  import orbax.checkpoint as ocp
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  ckpt.close()
  return jax.tree.leaves(restored['state'])


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
  """One uninterrupted 4-step tiny run (checkpoints at 2 and 4), shared by the tests below."""
  workdir = tmp_path_factory.mktemp('whole')
  assert brt_train(_args(workdir)) == 0
  return workdir


def test_resumed_run_equals_uninterrupted_bitwise(tmp_path, whole):
  part = tmp_path / 'part'
  assert brt_train(_args(part, steps=2)) == 0
  env = dict(os.environ)
  result = subprocess.run([sys.executable, '-m', 'block_recurrent.main', *_args(part)], env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'resumed from' in result.stdout
  assert _train_losses(part)[4] == _train_losses(whole)[4]  # bitwise
  assert _train_losses(part)[3] == _train_losses(whole)[3]
  a, b = _checkpoint_leaves(whole, 4), _checkpoint_leaves(part, 4)
  assert len(a) == len(b) and len(a) > 10
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (whole / 'config.gin').read_text().count('configs.ModelConfig') > 3


def _state(cfg, batch_size, tx):
  model = brt.build_model(config=cfg, seed=0)
  graphdef, params = nnx.split(model)
  carry = model.init_carry(batch_size)
  return graphdef, step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(1)),
                                       carry=carry, eval_carry=carry)


def _batch(cfg, batch_size, seed=0):
  toks = helpers.tokens(seed, batch_size, cfg.segment_length + 1)
  return {'inputs': toks[:, :-1], 'targets': toks[:, 1:], 'mask': np.ones(toks[:, 1:].shape, bool),
          'start': np.ones(batch_size, bool), 'num_bytes': np.full(batch_size, cfg.segment_length, np.int32)}


def test_train_step_on_a_2x4_mesh_equals_one_device():
  """The whole train step (forward, backward, update) sharded over 8 devices == one device, 1e-5.

  Plain SGD makes the update a linear function of the gradient; Adam and Adafactor take g/|g| on the
  first step, which turns the 1e-9 reassociation noise of near-zero gradients into lr-sized changes, so
  comparing their parameters would test the optimiser's conditioning, not the sharding.
  """
  import optax
  cfg = helpers.config('rec_fixed_skip', num_heads=4, head_dim=8, dropout_rate=0.0)
  tx, schedule = optax.sgd(0.1), (lambda step: 0.1)
  graphdef, state = _state(cfg, 4, tx)
  batch = _batch(cfg, 4)
  fn = lambda s, b: step_lib.train_step(graphdef, tx, schedule, s, b, dropout=False)
  one, m1 = jax.jit(fn)(state, batch)
  mesh = sharding.make_mesh(data=2, model=4)
  p_sh = sharding.param_shardings(mesh, state.params)
  placed = state._replace(params=jax.device_put(state.params, p_sh))
  eight, m8 = jax.jit(fn)(placed, {k: jax.device_put(v, sharding.batch_sharding(mesh, v.shape))
                                    for k, v in batch.items()})
  helpers.assert_close(eight.params, one.params, 1e-5, 'params after a sharded step')
  helpers.assert_close(eight.carry, one.carry, 1e-5, 'carry after a sharded step')
  assert abs(float(m8['loss']) - float(m1['loss'])) <= 1e-5


def test_eval_carry_never_leaks_into_training():
  cfg = helpers.config('rec_fixed_skip', dropout_rate=0.0)
  train_cfg = configs.TrainConfig(optimizer='adafactor', warmup_steps=1)
  tx, schedule = optim.optimizer(train_cfg), optim.schedule(train_cfg)
  graphdef, state = _state(cfg, 2, tx)
  train = jax.jit(lambda s, b: step_lib.train_step(graphdef, tx, schedule, s, b, dropout=False))
  evaluate = jax.jit(lambda s, b: step_lib.eval_step(graphdef, s, b))
  state, _ = train(state, _batch(cfg, 2, 0))
  evaluated, _ = evaluate(state, _batch(cfg, 2, 5))
  assert np.max(np.abs(np.asarray(evaluated.eval_carry.states[0]) - np.asarray(state.eval_carry.states[0]))) > 0
  helpers.assert_close(evaluated.carry, state.carry, 0.0, 'train carry after eval')
  helpers.assert_close(evaluated.params, state.params, 0.0, 'params after eval')
  after_eval, _ = train(evaluated, _batch(cfg, 2, 1))
  without, _ = train(state, _batch(cfg, 2, 1))
  helpers.assert_close(after_eval.params, without.params, 0.0, 'training after eval')


def test_bad_input_fails_in_one_line_and_keeps_checkpoints(tmp_path, capsys):
  assert brt_train(['--gin_file=gin/experiments/nope.gin', f'--workdir={tmp_path}/a']) == 2
  assert "gin file 'gin/experiments/nope.gin' not found" in capsys.readouterr().err
  assert brt_train(_args(tmp_path / 'b') + ['--gin_param=configs.TrainConfig.stepz = 3']) == 2
  assert "doesn't have a parameter named 'stepz'" in capsys.readouterr().err
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  assert brt_train(_args(blocker / 'sub', steps=2)) == 2
  assert 'cannot write to workdir' in capsys.readouterr().err


def test_checkpoint_of_another_config_is_a_clear_error_and_stays(tmp_path, whole, capsys):
  run = tmp_path / 'run'
  shutil.copytree(whole, run)
  assert brt_train(_args(run, steps=6) + ['--gin_param=configs.ModelConfig.d_model = 48']) == 2
  err = capsys.readouterr().err
  assert 'does not fit this config' in err and err.count('\n') == 1
  assert sorted(p.name for p in (run / 'checkpoints').iterdir() if p.name.isdigit()) == ['2', '4']


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path, whole, capsys):
  run = tmp_path / 'run'
  shutil.copytree(whole, run)
  for f in (run / 'checkpoints' / '4' / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(f.read_bytes()[:100])  # truncate the array data of the newest checkpoint
  capsys.readouterr()
  assert brt_train(_args(run, steps=3)) == 0
  out = capsys.readouterr().out
  assert f'resumed from {run}/checkpoints/2' in out and (run / 'checkpoints' / '3').is_dir()
