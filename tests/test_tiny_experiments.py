"""Every experiment in gin/experiments/tiny/ as a new user runs it: brt-train for 2 steps (with an
evaluation), brt-eval on a small text folder, brt-generate a few tokens, each through its entry point.
This is what catches a family that builds and runs its forward pass but cannot train (a carry the
trainer cannot shard, a decode path that does not exist)."""

import json
import math
import pathlib

import pytest

from helpers import MESH

from block_recurrent.cli.eval import main as brt_eval
from block_recurrent.cli.generate import main as brt_generate
from block_recurrent.cli.train import main as brt_train

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.name for p in (ROOT / 'gin/experiments/tiny').glob('*.gin'))
PARAMS = ['configs.TrainConfig.num_steps = 2', 'configs.TrainConfig.checkpoint_every = 2',
          'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_every = 2',
          'configs.TrainConfig.eval_segments = 1', 'configs.DataConfig.batch_size = 2', *MESH]


def test_the_tiny_experiments_cover_every_family():
  families = {'rec_fixed_skip.gin', 'slide.gin', 'xl.gin', 'relit.gin', 'arelit.gin', 'gtrxl.gin',
              'relit_mixed.gin'}
  assert families <= set(EXPERIMENTS), EXPERIMENTS


@pytest.fixture(scope='module')
def texts(tmp_path_factory):
  folder = tmp_path_factory.mktemp('texts')
  (folder / 'a.txt').write_text('It is a truth universally acknowledged, that a single man in possession of '
                                'a good fortune, must be in want of a wife.')
  (folder / 'b.txt').write_text('Call me Ishmael.')
  return folder


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_tiny_experiment_trains_evaluates_and_generates(experiment, texts, tmp_path, capsys):
  workdir = tmp_path / 'run'
  args = ([f'--gin_file={ROOT}/gin/experiments/tiny/{experiment}', f'--gin_file={ROOT}/gin/task/pg_mini_bytes.gin']
          + [f'--gin_param={p}' for p in PARAMS] + [f'--workdir={workdir}'])
  assert brt_train(args) == 0, capsys.readouterr().err
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in records if r.get('split') == 'train']
  validation = [r for r in records if r.get('split') == 'validation']
  assert [r['step'] for r in train] == [1, 2] and all(math.isfinite(r['loss']) for r in train)
  assert validation and math.isfinite(validation[-1]['bits_per_byte'])
  assert (workdir / 'checkpoints' / '2').is_dir()

  capsys.readouterr()
  assert brt_eval([f'--workdir={workdir}', '--split=test', '--task=text_folder_bytes',
                   f'--data_dir={texts}']) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  assert 'documents: 2' in out
  bits = float(out.split('bits per byte: ')[1].split()[0])
  assert 0.0 < bits < 20.0

  if experiment in ('slide.gin', 'xl.gin'):  # one per family: the attention family generates with rec_fixed_skip
    return
  assert brt_generate([f'--workdir={workdir}', '--prompt=It was the', '--max_new_tokens=12', '--temperature=0',
                       '--seed=1']) == 0, capsys.readouterr().err
  text = capsys.readouterr().out
  assert len(text.rstrip('\n')) >= 1
