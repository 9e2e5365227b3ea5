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


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = ()) -> None:
  """Clears any earlier config and parses these files and bindings (later ones win)."""
  _plain_files_only()
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
