"""What a red team did to a run's workdir (docs/reliability.md, "Second pass"), through the real commands:
corrupted and unreadable checkpoints, a second trainer, diverged parameters, a reader racing the writer's
rotation, and resumes with other settings. One tiny run is trained per module; each case works on a copy."""

import glob
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import MESH

from block_recurrent.cli.eval import main as eval_main
from block_recurrent.cli.train import main as train_main
from block_recurrent.train import checkpoint as ckpt_lib, preemption, workdir as workdir_lib

pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

TINY = ['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/task/pg_mini_bytes.gin']
FAST = ['configs.TrainConfig.num_steps = 2', 'configs.TrainConfig.checkpoint_every = 1',
        'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_segments = 1',
        'configs.TrainConfig.warmup_steps = 1', 'configs.DataConfig.batch_size = 2', *MESH]


def _train(workdir, *params):
  return train_main(TINY + [f'--gin_param={p}' for p in FAST + list(params)] + [f'--workdir={workdir}'])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny 2-step run with checkpoints at steps 1 and 2: the uninterrupted reference."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  assert _train(workdir) == 0
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(trained, copy)
  (copy / workdir_lib.LOCK_NAME).unlink(missing_ok=True)
  return copy


def _params(workdir, step):
  return ckpt_lib.read_raw(workdir / 'checkpoints', [step])[step]['state']['params']


def _equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _flip_bytes(step_dir) -> None:
  """Flips 8 bytes in the middle of every array data file of a checkpoint's per-process OCDBT store (some
  hold superseded data that restore never reads, so one file alone may change nothing)."""
  for target in glob.glob(f'{step_dir}/state/ocdbt.process_0/d/*'):
    data = bytearray(open(target, 'rb').read())
    for i in range(len(data) // 2, len(data) // 2 + 8):
      data[i] ^= 0x5A
    open(target, 'wb').write(bytes(data))


def test_digests_see_one_flipped_bit_and_do_not_depend_on_the_sharding():
  from jax.sharding import NamedSharding, PartitionSpec as P
  tree = {'w': jax.numpy.arange(64, dtype=jax.numpy.float32).reshape(8, 8), 'b': jax.numpy.ones((3,), jax.numpy.bfloat16),
          'k': jax.numpy.arange(4, dtype=jax.numpy.uint32)}
  base = ckpt_lib.digests(tree)
  mesh = jax.make_mesh((len(jax.devices()),), ('d',))
  sharded = dict(tree, w=jax.device_put(tree['w'], NamedSharding(mesh, P('d'))))
  assert ckpt_lib.digests(sharded) == base
  bits = np.asarray(tree['w']).view(np.uint32).copy()
  bits[5, 3] ^= 1 << 7
  assert ckpt_lib.digests(dict(tree, w=jax.numpy.asarray(bits.view(np.float32))))["['w']"] != base["['w']"]
  swapped = np.asarray(tree['w']).copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert ckpt_lib.digests(dict(tree, w=jax.numpy.asarray(swapped)))["['w']"] != base["['w']"]
  assert ckpt_lib.examine(dict(tree, b=jax.numpy.full((3,), jax.numpy.nan, jax.numpy.bfloat16)))[1] == "['b']"


def test_flipped_bytes_are_detected_set_aside_and_the_run_ends_as_uninterrupted(trained, run, capsys, caplog):
  _flip_bytes(run / 'checkpoints' / '2')
  assert _train(run) == 0
  out = capsys.readouterr().out
  assert 'resumed from' in out and out.count('/checkpoints/1') >= 1
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING' and 'checksums' in r.getMessage()]
  assert warnings and 'restored' in warnings[0] and 'moved it to' in warnings[0]
  aside = os.listdir(run / 'checkpoints_set_aside')
  assert len(aside) == 1 and aside[0].startswith('2.corrupted.')  # kept, not deleted
  assert _equal(_params(run, 2), _params(trained, 2))  # resumed from 1, re-ran step 2: the same parameters


def _texts(folder):
  folder.mkdir()
  (folder / 'a.txt').write_text('A short document.\n')
  return folder


def test_a_reader_falls_back_without_moving_anything(run, tmp_path, capsys, caplog):
  _flip_bytes(run / 'checkpoints' / '2')
  assert eval_main([f'--workdir={run}', '--task=text_folder_bytes', f'--data_dir={_texts(tmp_path / "texts")}']) == 0
  assert 'checkpoints/1' in capsys.readouterr().out
  assert any('fail their checksums' in r.getMessage() for r in caplog.records)
  assert sorted(os.listdir(run / 'checkpoints')) == ['1', '2'] and not (run / 'checkpoints_set_aside').exists()


def test_an_unreadable_newest_checkpoint_lets_the_run_finish(trained, run, capsys):
  """The red team's recipe: delete checkpoints/N/data/metadata of a finished run and rerun it; before, the
  forced save of step N met Orbax's StepAlreadyExistsError on every rerun. Metrics rows of the replayed
  step move to metrics.superseded.jsonl, so metrics.jsonl keeps one row per split and step."""
  os.remove(run / 'checkpoints' / '2' / 'data' / 'metadata')
  assert _train(run) == 0
  assert sorted(os.listdir(run / 'checkpoints')) == ['1', '2']
  assert os.listdir(run / 'checkpoints_set_aside')[0].startswith('2.unreadable.')
  assert _equal(_params(run, 2), _params(trained, 2))
  rows = [tuple(sorted((k, str(v)) for k, v in __import__('json').loads(line).items() if k in ('split', 'step')))
          for line in (run / 'metrics.jsonl').read_text().splitlines()]
  assert len(rows) == len(set(rows))
  assert (run / 'metrics.superseded.jsonl').read_text().count('"step": 2') >= 1


def test_missing_state_metadata_falls_back_instead_of_blaming_the_config(run, capsys):
  os.remove(run / 'checkpoints' / '2' / 'state' / '_METADATA')
  assert _train(run) == 0
  assert 'resumed from' in capsys.readouterr().out
  assert os.listdir(run / 'checkpoints_set_aside')[0].startswith('2.unreadable.')


def test_a_missing_manifest_is_a_quiet_fall_back(run, tmp_path, capsys, caplog):
  """The OCDBT manifest of the newest checkpoint deleted: a reader falls back to the previous checkpoint
  with one warning, and nothing else reaches stderr (TensorStore's failing callbacks used to print pages)."""
  os.remove(run / 'checkpoints' / '2' / 'state' / 'manifest.ocdbt')
  texts = _texts(tmp_path / 'texts')
  capsys.readouterr()
  assert eval_main([f'--workdir={run}', '--task=text_folder_bytes', f'--data_dir={texts}']) == 0
  out, err = capsys.readouterr()
  assert 'checkpoints/1' in out and not err, err
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING' and 'restored' in r.getMessage()]
  assert len(warnings) == 1 and '/checkpoints/2 is incomplete, corrupted or unreadable' in warnings[0], warnings


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(run, capsys):
  holder = subprocess.Popen([sys.executable, '-c', 'import sys, time; from block_recurrent.train import workdir; '
                             'workdir.Lock(sys.argv[1]).acquire(); print("held", flush=True); time.sleep(600)',
                             str(run)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    config = (run / 'config.gin').read_text()
    assert _train(run, 'configs.TrainConfig.num_steps = 3') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'is in use by brt-train pid {holder.pid} on ' in err[0], err
    assert (run / 'config.gin').read_text() == config  # the second one touched nothing
  finally:
    holder.kill()
    holder.wait()
  assert workdir_lib.holder(run) == ''  # the kernel dropped the dead process's lock
  with workdir_lib.Lock(run):  # and a new trainer takes it over
    assert 'pid' in workdir_lib.holder(run)


def test_a_reader_racing_rotation_reads_the_new_checkpoint(run):
  """A reader lists steps 1 and 2; the live run then saves 3 and rotates 1 and 2 away (keep=1) before the
  reader reads: the reader reads 3, and blames nothing."""
  from block_recurrent import ginconf
  from block_recurrent.train import loop
  model_cfg, data_cfg, train_cfg, mesh_cfg = workdir_lib.read_configs(str(run), [])
  s = loop.setup(model_cfg, data_cfg, train_cfg, mesh_cfg)
  reader = ckpt_lib.Checkpointer(run / 'checkpoints', keep=1000, every=1, create=False)
  assert reader.steps() == [1, 2]
  shutil.copytree(run / 'checkpoints' / '2', run / 'checkpoints' / '3.tmp')
  os.rename(run / 'checkpoints' / '3.tmp', run / 'checkpoints' / '3')  # rename, as Orbax finishes a save
  shutil.rmtree(run / 'checkpoints' / '1')
  shutil.rmtree(run / 'checkpoints' / '2')
  step, _, _ = reader.restore(s.target)
  reader.close()
  assert step == 3
  del ginconf


def test_losses_file_never_overwrites_other_files(run, capsys):
  config = (run / 'config.gin').read_text()
  assert eval_main([f'--workdir={run}', f'--losses_file={run}/config.gin',
                    '--gin_param=configs.TrainConfig.eval_segments = 1']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'already exists and is not a losses file brt-eval wrote' in err[0]
  assert (run / 'config.gin').read_text() == config


def test_eval_batch_size_can_be_changed_at_evaluation(run, tmp_path, capsys):
  texts = tmp_path / 'texts'
  texts.mkdir()
  for i, n in enumerate((90, 130)):  # two short documents of 3 and 5 segments (fewer than 3: every split)
    (texts / f'{i}.txt').write_text(('A short document. ' * 10)[:n] + '\n')
  scores = []
  for extra in ([], ['--gin_param=configs.DataConfig.eval_batch_size = 4']):
    assert eval_main([f'--workdir={run}', '--task=text_folder_bytes', f'--data_dir={texts}', '--split=test',
                      *extra]) == 0
    out = capsys.readouterr().out
    scores.append(float(out.split('bits per byte:')[1].split()[0]))
  assert abs(scores[0] - scores[1]) < 1e-4 * scores[0]  # the same documents, scored one lane at a time


@pytest.mark.parametrize('param, named', [
    ('configs.ModelConfig.d_model = 48', 'ModelConfig.d_model was 32, now 48'),
    ('configs.DataConfig.batch_size = 4', 'DataConfig.batch_size was 2, now 4'),
    ("configs.TrainConfig.optimizer = 'adamw'", "TrainConfig.optimizer was 'adafactor', now 'adamw'"),
])
def test_a_resume_with_other_settings_names_them(run, capsys, param, named):
  assert _train(run, param) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and named in err[0] and 'use the settings it was saved with, or a new --workdir' in err[0], err


def test_a_resume_with_other_flags_keeps_the_config_history(run, capsys):
  before = (run / 'config.gin').read_text()
  assert _train(run, 'configs.TrainConfig.num_steps = 3', 'configs.TrainConfig.grad_clip = 1.0') == 0
  out = capsys.readouterr().out
  kept = glob.glob(f'{run}/config_history/config.*.step2.gin')
  assert len(kept) == 1 and open(kept[0]).read() == before and f'kept as {kept[0]}' in out
  assert 'num_steps = 3' in (run / 'config.gin').read_text()  # and clipping could be turned on mid-run


def test_load_dir_on_a_resuming_workdir_is_said_to_be_unused(run, trained, capsys):
  assert _train(run, 'configs.TrainConfig.num_steps = 3', f'configs.TrainConfig.seed = 0') == 0
  capsys.readouterr()
  assert train_main(TINY + [f'--gin_param={p}' for p in FAST + ['configs.TrainConfig.num_steps = 3']]
                    + [f'--workdir={run}', f'--load_dir={trained}']) == 0
  assert f'--load_dir {trained} not used' in capsys.readouterr().out


def test_sighup_is_a_preemption():
  with preemption.handling() as signals:
    os.kill(os.getpid(), signal.SIGHUP)
    assert signals.pending() and signals.received == 'SIGHUP'


def test_the_checkpoint_that_led_to_nan_is_set_aside_and_the_advice_can_be_followed(run, capsys):
  """Resumed at step 2 with a learning rate of 1e20: step 3's update is finite but pushes the parameters to
  ~1e20, its checkpoint is saved, and steps 4 and 5 are NaN. Checkpoint 3 is what produced them: it is
  moved aside and checkpoint 2 is named. Lowering the learning rate and turning gradient clipping on (a
  change of the optimiser's transform chain) then resumes from checkpoint 2."""
  assert _train(run, 'configs.TrainConfig.learning_rate = 1e20', 'configs.TrainConfig.num_steps = 6',
                'configs.TrainConfig.max_consecutive_skips = 2') == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f'the last good checkpoint is {run}/checkpoints/2.' in err[0], err
  assert sorted(os.listdir(run / 'checkpoints')) == ['1', '2']
  assert [n.split('.')[:2] for n in os.listdir(run / 'checkpoints_set_aside')] == [['3', 'diverged']]
  assert _train(run, 'configs.TrainConfig.num_steps = 3', 'configs.TrainConfig.grad_clip = 1.0') == 0
  assert f'resumed from {run}/checkpoints/2' in capsys.readouterr().out


def test_a_full_disk_is_one_line(tmp_path):
  """A real failed write: brt-train in a child process whose files may not grow past 150 kB (RLIMIT_FSIZE,
  so the kernel fails the checkpoint's array writes with EFBIG, as a full disk fails them with ENOSPC).
  Orbax reports the failure from its threads and callbacks too (hundreds of lines before): one line now."""
  # The limit is set inside the child (no preexec_fn: forking a process that runs JAX threads can deadlock).
  limited = ('import resource, runpy, signal, sys\n'
             'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
             'resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))\n'
             "sys.argv = ['brt-train'] + sys.argv[1:]\n"
             "runpy.run_module('block_recurrent.cli.train', run_name='__main__')\n")
  argv = [sys.executable, '-c', limited, *TINY, *[f'--gin_param={p}' for p in FAST], f'--workdir={tmp_path}/run']
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2', TF_CPP_MIN_LOG_LEVEL='3')
  run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
  err = [line for line in run.stderr.splitlines() if not line.startswith(('I0000', 'E0000', 'W0000', 'WARNING: All'))]
  assert run.returncode == 2 and len(err) == 1, run.stderr[-3000:]
  assert err[0].startswith(f'brt-train: error: cannot write checkpoints to {tmp_path}/run/checkpoints: File too large: '
                           'free space or fix the folder, then rerun to resume'), err


CASES = {  # docs/reliability.md, "Checkpoints and the workdir": the case ids and the tests that run them
    'ckpt-flipped-bytes': test_flipped_bytes_are_detected_set_aside_and_the_run_ends_as_uninterrupted,
    'ckpt-flipped-bytes-reader': test_a_reader_falls_back_without_moving_anything,
    'ckpt-unreadable-newest-rerun': test_an_unreadable_newest_checkpoint_lets_the_run_finish,
    'ckpt-missing-state-metadata': test_missing_state_metadata_falls_back_instead_of_blaming_the_config,
    'ckpt-missing-manifest': test_a_missing_manifest_is_a_quiet_fall_back,
    'workdir-second-trainer': test_a_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over,
    'nonfinite-diverged-checkpoint': test_the_checkpoint_that_led_to_nan_is_set_aside_and_the_advice_can_be_followed,
    'reader-racing-rotation': test_a_reader_racing_rotation_reads_the_new_checkpoint,
    'losses-file-other-file': test_losses_file_never_overwrites_other_files,
    'eval-batch-size-changed': test_eval_batch_size_can_be_changed_at_evaluation,
    'resume-other-width': test_a_resume_with_other_settings_names_them,
    'resume-other-batch': test_a_resume_with_other_settings_names_them,
    'resume-other-optimizer': test_a_resume_with_other_settings_names_them,
    'config-history': test_a_resume_with_other_flags_keeps_the_config_history,
    'load-dir-unused': test_load_dir_on_a_resuming_workdir_is_said_to_be_unused,
    'preemption-sighup': test_sighup_is_a_preemption,
    'ckpt-disk-full': test_a_full_disk_is_one_line,
}


def test_doc_table_lists_every_case():
  import doc_tables
  rows = doc_tables.rows('### Checkpoints and the workdir')
  assert sorted(rows) == sorted(CASES)
  for fragment in ('fail their checksums', 'is in use by brt-train pid', 'already exists and is not a losses file',
                   'ModelConfig.d_model was 32, now 48', 'DataConfig.batch_size was 2, now 4',
                   "TrainConfig.optimizer was 'adafactor', now 'adamw'", 'led to non-finite steps: moved to'):
    assert any(fragment in row for row in rows.values()), fragment

