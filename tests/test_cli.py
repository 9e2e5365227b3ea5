"""The commands' error contract beyond the bad-input table (docs/reliability.md): --debug raises, an
unexpected exception is one line with exit 1, Ctrl-C passes through, the console scripts exit 2 after one
line, and nothing loads data with pickle."""

import ast
import pathlib
import sys

import pytest

from block_recurrent import configs
from block_recurrent.cli import info
from block_recurrent.cli.train import main as train_main
from block_recurrent.cli import vocab as vocab_cli

REPO = pathlib.Path(__file__).resolve().parent.parent


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


def test_no_module_loads_data_with_pickle():
  """Checkpoints (Orbax: TensorStore arrays + JSON), data cursors (JSON) and vocabularies (SentencePiece
  protobuf) load without pickle: no module imports it, and no np.load allows it."""
  banned = {'pickle', 'cPickle', 'dill', 'cloudpickle', 'joblib', 'shelve', 'marshal'}
  for path in sorted((REPO / 'block_recurrent').rglob('*.py')):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name.split('.')[0] for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [(node.module or '').split('.')[0]]
      else:
        names = []
      assert not banned & set(names), f'{path}:{node.lineno} imports {names}'
      if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == 'load':
        for kw in node.keywords:
          assert not (kw.arg == 'allow_pickle' and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)), \
              f'{path}:{node.lineno} loads with allow_pickle'
