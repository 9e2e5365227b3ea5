"""The commands' error contract (block_recurrent/cli/contract.py): --debug raises, an unexpected exception
is one line with exit 1, Ctrl-C passes through, the console scripts exit 2 after one line, and the tables of
bad inputs and bad flag values in docs/reliability.md list exactly the cases the command tests run."""

import pathlib
import sys

import pytest

import bad_inputs
import flag_values

from block_recurrent import configs
from block_recurrent.cli import info
from block_recurrent.cli.train import main as train_main
from block_recurrent.cli import vocab as vocab_cli


def test_debug_raises_with_the_traceback(tmp_path, monkeypatch, capsys):
  argv = ['--gin_file=experiments/tiny/nope.gin', f'--workdir={tmp_path}/w']
  assert train_main(argv) == 2
  with pytest.raises(configs.ConfigError, match='not found'):
    train_main(argv + ['--debug'])
  with pytest.raises(configs.ConfigError, match="--task 'wiki' is not a corpus"):
    vocab_cli.main(['--task=wiki', f'--output={tmp_path}/v', '--debug'])

  def boom(*args, **kwargs):
    raise RuntimeError('something broke\nsecond line of detail')

  monkeypatch.setattr(info.api, 'count_params', boom)
  capsys.readouterr()
  tiny = ['--gin_file=experiments/tiny/rec_fixed_skip.gin']
  assert info.main(tiny) == 1  # unexpected: exit 1, one line naming the exception
  assert capsys.readouterr().err == ('brt-info: error: RuntimeError: something broke '
                                     '(rerun with --debug for the traceback)\n')
  with pytest.raises(RuntimeError, match='something broke'):
    info.main(tiny + ['--debug'])

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(info.api, 'count_params', interrupted)
  with pytest.raises(KeyboardInterrupt):  # Ctrl-C is never turned into an error line
    info.main(tiny)


@pytest.mark.parametrize('entry, argv', [
    ('block_recurrent.cli.train:run', ['--gin_file=nope.gin', '--workdir=w']),
    ('block_recurrent.cli.eval:run', ['--workdir=nowhere']),
    ('block_recurrent.cli.generate:run', ['--workdir=nowhere']),
    ('block_recurrent.cli.info:run', ['--gin_file=nope.gin']),
    ('block_recurrent.cli.vocab:run', ['--task=wiki', '--output=v']),
])
def test_console_entry_points_exit_2_with_one_line(entry, argv, tmp_path, monkeypatch, capsys):
  """What setup.py's console scripts call: sys.exit(2) after one stderr line."""
  import importlib
  module, function = entry.split(':')
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(sys, 'argv', ['prog', *argv])
  with pytest.raises(SystemExit) as exit_info:
    getattr(importlib.import_module(module), function)()
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith('brt-') and ': error: ' in err and err.count('\n') == 1, err


def test_doc_table_lists_every_case_and_its_message():
  rows = bad_inputs.doc_rows()
  assert sorted(rows) == sorted(c.id for c in bad_inputs.CASES)
  for case in bad_inputs.CASES:
    assert case.fragment.replace('|', '\\|') in rows[case.id], case.id
    assert f' | {case.status} | ' in rows[case.id], case.id
  categories = {c.category for c in bad_inputs.CASES}
  assert categories == {'gin', 'data', 'vocab', 'checkpoint', 'cli'} and len(bad_inputs.CASES) >= 25
  for prog in {c.prog for c in bad_inputs.CASES + flag_values.CASES}:  # whose test file runs its cases
    assert (pathlib.Path(__file__).parent / f'test_{prog.removeprefix("brt-")}.py').exists(), prog


def test_doc_table_lists_every_flag_value_case():
  rows = flag_values.doc_rows()
  assert sorted(rows) == sorted(c.id for c in flag_values.CASES)
  for case in flag_values.CASES:
    assert case.fragment in rows[case.id], case.id
