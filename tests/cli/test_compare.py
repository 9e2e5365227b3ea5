"""brt-compare: two tiny experiments on the same data, curves against steps and training time, a table;
experiments reading different data are refused with one line."""

import json

import pytest

from block_recurrent.cli import compare
from helpers import MESH_ARGS

TINY = ['gin/experiments/tiny/slide.gin', 'gin/experiments/tiny/rec_fixed_skip.gin']
COMMON = ["--gin_param=configs.DataConfig.task = 'pg_mini_bytes'", '--gin_param=configs.DataConfig.batch_size = 2', *MESH_ARGS,
          '--gin_param=configs.TrainConfig.warmup_steps = 1']


def test_compare_trains_each_experiment_and_tabulates_validation_curves(tmp_path, capsys):
  code = compare.main([f'--gin_file={f}' for f in TINY] + COMMON
                      + ['--names', 'Slide', 'Rec', '--steps=2', '--eval_every=1', '--eval_tokens=64',
                         f'--workdir={tmp_path}'])
  assert code == 0
  out = capsys.readouterr().out
  table = (tmp_path / 'compare.md').read_text()
  assert table in out + '\n'
  rows = [line for line in table.splitlines() if line.startswith('| Slide') or line.startswith('| Rec')]
  assert len(rows) == 2 and all('| 2 |' in r for r in rows)  # both ran 2 steps
  results = json.loads((tmp_path / 'compare.json').read_text())
  assert [r['name'] for r in results] == ['Slide', 'Rec']
  for r in results:
    assert [c['step'] for c in r['curve']] == [1, 2]  # evaluated every step, the final one included once
    assert r['curve'][0]['train_seconds'] <= r['curve'][1]['train_seconds']
    assert all(0 < c['bits_per_byte'] < 12 for c in r['curve'])
    assert all(c['tokens'] == 64 for c in r['curve'])  # the same validation text for both
  assert results[1]['non_embedding_params'] > results[0]['non_embedding_params']  # the recurrent layer
  # The per-position panel: both models scored on the same validation tokens, by position in the document.
  for r in results:
    assert sum(b['tokens'] for b in r['by_position']) == r['curve'][-1]['tokens']
    assert sum(b['bits'] for b in r['by_position']) == pytest.approx(
        r['curve'][-1]['bits_per_byte'] * r['curve'][-1]['bytes'], rel=1e-5)
  panel = table.split('by position in the document')[1]
  first = results[0]['by_position'][0]
  diff = results[1]['by_position'][0]['bits_per_byte'] - first['bits_per_byte']
  assert f'| 0-63 | {first["tokens"]} | {first["bits_per_byte"]:.4f} | {diff:+.4f} |' in panel


def test_compare_refuses_experiments_on_different_data_or_unnamed(tmp_path, capsys):
  books, other = tmp_path / 'books.gin', tmp_path / 'other_task.gin'
  books.write_text(f"include '{TINY[1]}'\ninclude 'task/pg_mini_bytes.gin'\n")
  other.write_text(f"include '{TINY[0]}'\ninclude 'task/pg_mini_tokens.gin'\n")
  code = compare.main([f'--gin_file={books}', f'--gin_file={other}', '--gin_param=configs.DataConfig.batch_size = 2', *MESH_ARGS,
                       f'--workdir={tmp_path / "runs"}', '--steps=1'])
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('brt-compare: error: the experiments read different data (')
  assert 'a comparison needs one task' in err[0]
  code = compare.main([f'--gin_file={f}' for f in TINY] + COMMON + [f'--workdir={tmp_path / "runs"}', '--steps=1',
                                                                   '--names', 'a', 'b', 'c'])
  assert code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      'brt-compare: error: --names gives 3 names for 2 --gin_file experiments: give one name per experiment']
  assert not (tmp_path / 'runs').exists()  # nothing trained, nothing written
