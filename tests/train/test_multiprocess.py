"""Multi-process training through JAX's distributed runtime on this machine: 2 processes with 4 CPU
devices each (gloo collectives, coordinator on localhost, data parallel) train the tiny config exactly as
1 process with 8 devices on a 4x2 data x model mesh does, and a checkpoint the 2-process run wrote is
restored by 1 process on that other mesh and continues with the same losses."""

import json
import os
import socket
import subprocess
import sys

import pytest

TINY = ['gin/experiments/tiny/rec_fixed_skip.gin', 'gin/task/pg_mini_bytes.gin']
PARAMS = ['configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_segments = 1',
          'configs.TrainConfig.warmup_steps = 2', 'configs.DataConfig.batch_size = 8',
          'configs.TrainConfig.checkpoint_every = 3', 'configs.ModelConfig.dropout_rate = 0.0']


def _args(workdir, steps, *extra):
  return ([f'--gin_file={f}' for f in TINY] + [f'--gin_param={p}' for p in PARAMS + list(extra)]
          + [f'--gin_param=configs.TrainConfig.num_steps = {steps}', f'--workdir={workdir}'])


def _env(devices, cache_dir=None):
  env = dict(os.environ)
  env['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={devices} '
                      '--xla_backend_optimization_level=0')
  env['JAX_PLATFORMS'] = 'cpu'
  if cache_dir:  # one process at a time writes it: the reference run, then the resumed run reads it
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  return env


def _start(args, devices, cache_dir=None):
  return subprocess.Popen([sys.executable, '-m', 'block_recurrent.cli.train', *args], env=_env(devices, cache_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=400):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out


def _losses(workdir):
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in rows if r['split'] == 'train'}


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


# The 1-process runs' mesh: another one than the 2-process run's (data parallel over 8 devices), shared by
# the reference run and the resumed run, which therefore compile the same programs (once, through a cache).
OTHER_MESH = ('configs.MeshConfig.data = 4', 'configs.MeshConfig.model = 2')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A 2-process run of 3 steps, and a 1-process 8-device run of 5 steps with the same 2 data shards on a
  4x2 (data x model) mesh."""
  two, one = tmp_path_factory.mktemp('two'), tmp_path_factory.mktemp('one')
  cache = tmp_path_factory.mktemp('jax_cache')
  port = _free_port()
  procs = [_start(_args(two, 3) + [f'--coordinator_address=localhost:{port}', '--num_processes=2',
                                   f'--process_id={i}'], devices=4) for i in range(2)]
  outs = [_finish(p) for p in procs]
  reference = _finish(_start(_args(one, 5, 'configs.DataConfig.data_shards = 2', *OTHER_MESH), devices=8,
                             cache_dir=cache))
  return two, one, outs, reference, cache


def test_two_processes_train_as_one_process_with_eight_devices(runs):
  two, one, outs, _, _ = runs
  assert 'training pg_mini_bytes' in outs[0] and 'step      3/3' in outs[0]
  assert 'training' not in outs[1] and 'step ' not in outs[1]  # only process 0 prints (gloo may chatter)
  a, b = _losses(two), _losses(one)
  assert sorted(a) == [1, 2, 3]
  for step in (1, 2, 3):
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


def test_two_process_checkpoint_resumes_in_one_process_on_another_mesh(runs):
  two, one, _, _, cache = runs
  out = _finish(_start(_args(two, 5, *OTHER_MESH), devices=8, cache_dir=cache))
  assert 'resumed from' in out and 'checkpoints/3' in out
  a, b = _losses(two), _losses(one)
  for step in (4, 5):
    assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])


def test_incomplete_multiprocess_flags_are_a_clear_error(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'block_recurrent.cli.train', *_args(tmp_path, 1), '--num_processes=2'],
                        env=_env(1), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert 'needs all of --coordinator_address, --num_processes and --process_id' in proc.stderr
