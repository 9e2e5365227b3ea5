"""Checks of the whole package's source: nothing loads data with pickle."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


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


def test_every_source_folder_is_a_package_setup_installs():
  """setup.py's find_packages finds only folders with an __init__.py: a folder without one (cli/ once)
  works from a checkout but is missing from an installed wheel, and with it every brt-* command."""
  import setuptools  # pylint: disable=import-outside-toplevel
  found = set(setuptools.find_packages(str(REPO), include=['block_recurrent', 'block_recurrent.*']))
  folders = {'.'.join(p.parent.relative_to(REPO).parts) for p in (REPO / 'block_recurrent').rglob('*.py')}
  assert folders <= found, f'folders setup.py would not install: {sorted(folders - found)}'
