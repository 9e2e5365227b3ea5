"""The house plan (docs/architecture.md), checked: imports point down, no cycles, small modules and
functions, and commands that print only their own lines."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / 'block_recurrent'
BIN = pathlib.Path(sys.executable).parent
COMMANDS = ['brt-train', 'brt-eval', 'brt-generate', 'brt-info', 'brt-vocab', 'brt-compare', 'brt-compile']
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions allowed past MAX_FUNCTION_LINES, and why.
LONG_FUNCTIONS = {}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    parts = path.relative_to(REPO).with_suffix('').parts
    name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
    out[name] = path
  return out


def _imports(name: str, path: pathlib.Path) -> set[str]:
  """The block_recurrent modules `name` imports, at any depth of its code."""
  modules = _modules()
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('block_recurrent')}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('block_recurrent'):
      for a in node.names:
        full = f'{node.module}.{a.name}'
        found.add(full if full in modules else node.module)
  return {m for m in found if m in modules and m != name}


def _layer(name: str) -> int:
  """0: primitives and model/data, 1: train and generation, 2: commands and diagnostics."""
  parts = name.split('.')
  if len(parts) > 1 and parts[1] in ('cli', 'diagnostics'):
    return 2
  if name == 'block_recurrent.train.__main__':
    return 2  # `python -m block_recurrent.train` is brt-train itself
  return 1 if len(parts) > 1 and parts[1] == 'train' else 0


def test_nothing_below_the_commands_imports_a_command_or_a_diagnostic():
  for name, path in _modules().items():
    for imported in _imports(name, path):
      if name == 'block_recurrent' or imported == 'block_recurrent':
        continue
      assert _layer(imported) < 2 or _layer(name) == 2, f'{name} imports {imported}: a command or diagnostic'
      assert not (_layer(name) == 0 and _layer(imported) == 1 and not imported.endswith('__init__')), \
          f'{name} (library) imports {imported} (training)'


def test_no_import_cycle():
  graph = {name: _imports(name, path) - {'block_recurrent'} for name, path in _modules().items()}
  # a package imports its __init__ implicitly; only module -> module edges count
  state = {}

  def visit(node, stack):
    state[node] = 'open'
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        cycle = stack[stack.index(nxt):] + [nxt]
        raise AssertionError('import cycle: ' + ' -> '.join(cycle))
      if nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])


def test_modules_and_functions_stay_small():
  too_long = []
  for name, path in _modules().items():
    text = path.read_text()
    lines = text.count('\n')
    assert lines <= MAX_MODULE_LINES, f'{path.relative_to(REPO)} has {lines} lines (> {MAX_MODULE_LINES}): split it'
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        length = node.end_lineno - node.lineno + 1
        key = f'{name}.{node.name}'
        if length > MAX_FUNCTION_LINES and key not in LONG_FUNCTIONS:
          too_long.append(f'{key} ({length} lines)')
  assert not too_long, 'functions over 60 lines: ' + ', '.join(too_long)


def _run(args, **kw):
  env = dict(os.environ, NO_GCE_CHECK='true')
  env.pop('XLA_FLAGS', None)
  return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, **kw)


def test_importing_the_package_prints_nothing():
  proc = _run([sys.executable, '-c', 'import block_recurrent; block_recurrent.ModelConfig'])
  assert proc.returncode == 0 and proc.stdout == '' and proc.stderr == '', proc.stderr


@pytest.mark.parametrize('command', COMMANDS)
def test_help_prints_only_the_usage(command):
  proc = _run([str(BIN / command), '--help'])
  assert proc.returncode == 0 and proc.stderr == '', proc.stderr
  assert proc.stdout.startswith(f'usage: {command} '), proc.stdout[:200]


def test_a_command_that_loads_tensorflow_prints_only_its_own_line():
  """brt-train checks the task (importing seqio and TensorFlow) before anything is built: TensorFlow's
  C++ start-up notices must not precede the command's one error line."""
  proc = _run([str(BIN / 'brt-train'), '--gin_file=gin/experiments/tiny/rec_fixed_skip.gin',
               "--gin_param=configs.DataConfig.task = 'nope_bytes'", '--workdir=/nonexistent/never-made'])
  assert proc.returncode == 2, proc.stderr
  assert proc.stdout == ''
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith('brt-train: error: '), proc.stderr


def test_filtered_stderr_drops_known_notices_and_keeps_the_rest():
  code = ('import os\nfrom block_recurrent import quiet\nwith quiet.filtered_stderr():\n'
          "  os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\\n')\n"
          "  os.write(2, b'a real warning\\n')\n")
  proc = _run([sys.executable, '-c', code])
  assert proc.returncode == 0 and proc.stderr == 'a real warning\n', proc.stderr
