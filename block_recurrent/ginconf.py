"""gin at the top level only: parse composed gin files and bind the frozen ModelConfig.

Gin files use `from __gin__ import dynamic_registration` and bind `configs.ModelConfig.<field>`; the
library below never imports gin. Files are found relative to the working directory, the repository's
`gin/` folder, or the repository root, so `gin/experiments/tiny/xl.gin` and `experiments/tiny/xl.gin`
both work, and includes inside gin files are written relative to `gin/`.
"""

from __future__ import annotations

import argparse
import importlib.util  # noqa: F401  (gin 0.5 on Python 3.11 needs it before dynamic_registration)
import pathlib
import sys
from typing import Sequence

import gin
from gin import config_parser

from block_recurrent import configs

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / 'gin'


_BINDINGS_HEADER = 'from __gin__ import dynamic_registration\nfrom block_recurrent import configs'


def _one_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return ' '.join(lines[:4]) if lines else type(error).__name__


def resolve(name: str) -> str:
  """The path of a gin file given relative to ., gin/ or the repository root."""
  for base in (pathlib.Path('.'), GIN_DIR, GIN_DIR.parent):
    if (base / name).is_file():
      return str(base / name)
  raise configs.ConfigError(f'gin file {name!r} not found (looked in ., {GIN_DIR}, {GIN_DIR.parent})')


def _plain_files_only() -> None:
  """Keeps gin's plain-file reader only. Its Python-package reader treats an include such as
  'train/x.gin' as package `train` and crashes (TypeError) when a namespace package of that name is
  importable, e.g. a tests/train folder; our includes are always files under gin/."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [(reader, exists) for reader, exists in readers if reader is open]


class _Delegate(config_parser.ParserDelegate):
  """Parses values without resolving them: references and macros compare by name."""

  def configurable_reference(self, scoped_name, evaluate):
    return ('@' if evaluate else '@@', scoped_name)

  def macro(self, name):
    return ('%', name)


def _bindings(path: str, ancestors: tuple[str, ...] = ()):
  """Yields (key, value, file, line, files that include this one) for a gin file and its includes."""
  if path in ancestors:
    raise configs.ConfigError(f'gin file {path} includes itself (via {" -> ".join(ancestors)})')
  with open(path) as f:
    try:
      statements = list(config_parser.ConfigParser(f, _Delegate()))
    except SyntaxError as e:
      raise configs.ConfigError(f'bad gin syntax in {path} line {e.lineno}: {e.msg}') from None
  for st in statements:
    if isinstance(st, config_parser.IncludeStatement):
      yield from _bindings(resolve(st.filename), ancestors + (path,))
    elif isinstance(st, config_parser.BindingStatement):
      key = '/'.join(filter(None, [st.scope, f'{st.selector}.{st.arg_name}']))
      yield key, st.value, path, st.location.line_num, ancestors + (path,)


def check_conflicts(gin_files: Sequence[str]) -> None:
  """Fails on two gin files that set one binding to different values when neither includes the other.

  Experiments compose files that each set their own knobs, so a contradiction (say size/tiny.gin and
  size/small.gin both included) is a mistake gin would silently resolve by order. Allowed: a file
  overriding what its own includes set, anything overriding base.gin (the shared defaults), a later
  --gin_file overriding an earlier one, and --gin_param overriding everything.
  """
  for top in gin_files:
    seen: dict[str, tuple] = {}
    for key, value, path, line, chain in _bindings(resolve(top)):
      if key in seen:
        old_value, old_path, old_line = seen[key]
        overridable = old_path in chain or pathlib.Path(old_path).name == 'base.gin'
        if old_value != value and not overridable:
          raise configs.ConfigError(
              f'conflicting gin bindings for {key}: {old_path}:{old_line} sets {_text(old_value)}, '
              f'{path}:{line} sets {_text(value)} (both included by {top}); keep one, or override with '
              f'--gin_param')
      seen[key] = (value, path, line)


def _text(value) -> str:
  return ''.join(value) if isinstance(value, tuple) and len(value) == 2 and value[0] in ('@', '@@', '%') \
      else repr(value)


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = ()) -> None:
  """Clears any earlier config and parses these files and bindings (later ones win).

  Contradictions inside one file's includes fail first (see check_conflicts)."""
  _plain_files_only()
  check_conflicts(gin_files)
  gin.clear_config(clear_constants=True)
  for path in (GIN_DIR.parent, GIN_DIR):
    if str(path) not in gin.config._LOCATION_PREFIXES:  # pylint: disable=protected-access
      gin.add_config_file_search_path(str(path))
  try:
    # The header lets --gin_param name any config class, even one no file mentions.
    bindings = [_BINDINGS_HEADER] + list(gin_params) if gin_params else []
    gin.parse_config_files_and_bindings([resolve(f) for f in gin_files], bindings,
                                        finalize_config=False, skip_unknown=False)
  except configs.ConfigError:
    raise
  except Exception as e:  # gin raises several types; surface one line with the file and binding
    raise configs.ConfigError(f'bad gin configuration: {_one_line(e)}') from None


def bound_model_config() -> configs.ModelConfig:
  """The ModelConfig that the parsed gin bindings describe."""
  return bound(configs.ModelConfig)


def bound(config_class):
  """An instance of a config dataclass with the parsed gin bindings applied (defaults if none name it)."""
  try:
    configurable = gin.get_configurable(config_class)
  except ValueError:  # no gin file or binding mentions the class: its defaults
    return config_class()
  try:
    return configurable()
  except configs.ConfigError as e:
    raise configs.ConfigError(str(e).splitlines()[0]) from None


def bound_data_config() -> configs.DataConfig:
  return bound(configs.DataConfig)


def model_config(gin_files: Sequence[str] = (), gin_params: Sequence[str] = ()) -> configs.ModelConfig:
  parse(gin_files, gin_params)
  return bound_model_config()


def add_flags(parser: argparse.ArgumentParser) -> None:
  """--gin_file and --gin_param, repeatable, as every command takes them."""
  parser.add_argument('--gin_file', action='append', default=[], help='gin file (repeatable; later wins)')
  parser.add_argument('--gin_param', action='append', default=[], help='gin binding (repeatable)')


def config_from_flags(prog: str, args: argparse.Namespace) -> configs.ModelConfig | None:
  """The ModelConfig of the parsed flags, or None after printing one line `prog: error: ...`."""
  try:
    return model_config(args.gin_file, args.gin_param)
  except configs.ConfigError as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return None
