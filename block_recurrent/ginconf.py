"""gin at the top level only: parse composed gin files and bind the frozen ModelConfig.

Gin files use `from __gin__ import dynamic_registration` and bind `configs.ModelConfig.<field>`; the
library below never imports gin. Files are found relative to the working directory, the repository's
`gin/` folder, or the repository root, so `gin/experiments/tiny/xl.gin` and `experiments/tiny/xl.gin`
both work, and includes inside gin files are written relative to `gin/`.

A gin file here is configuration only: before gin reads anything, every file, include and --gin_param is
checked to import nothing but block_recurrent.configs, to bind only fields of its config dataclasses, and
to hold literal values (numbers, strings, booleans, None, lists, tuples, dicts, macros) but no `@name`
references. Plain gin would let a file `import os` and call `@os.system()` through dynamic registration.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util  # noqa: F401  (gin 0.5 on Python 3.11 needs it before dynamic_registration)
import pathlib
import re
import sys
from typing import NamedTuple, Sequence

import gin
from gin import config_parser

from block_recurrent import configs, errors

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / 'gin'


_BINDINGS_HEADER = 'from __gin__ import dynamic_registration\nfrom block_recurrent import configs'


def resolve(name: str, included_by: str = '') -> str:
  """The path of a gin file given relative to ., gin/ or the repository root."""
  for base in (pathlib.Path('.'), GIN_DIR, GIN_DIR.parent):
    if (base / name).is_file():
      return str(base / name)
  raise configs.ConfigError(f'gin file {name!r}{" included by " + included_by if included_by else ""} not found '
                            f'(looked in ., {GIN_DIR}, {GIN_DIR.parent}): check the path')


def _plain_files_only() -> None:
  """Keeps gin's plain-file reader only. Its Python-package reader treats an include such as
  'train/x.gin' as package `train` and crashes (TypeError) when a namespace package of that name is
  importable, e.g. a tests/train folder; our includes are always files under gin/."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  readers[:] = [(reader, exists) for reader, exists in readers if reader is open]


class _Reference(NamedTuple):
  """`@name` (evaluate: `@name()`) or `@@name` in a value: what gin would call."""
  evaluate: bool
  name: str

  def __str__(self):
    return f'@{self.name}()' if self.evaluate else f'@@{self.name}'


class _Macro(NamedTuple):
  name: str

  def __str__(self):
    return f'%{self.name}'


class _Delegate(config_parser.ParserDelegate):
  """Parses values without resolving them: references and macros compare by name."""

  def configurable_reference(self, scoped_name, evaluate):
    return _Reference(evaluate, scoped_name)

  def macro(self, name):
    return _Macro(name)


_IMPORTS = ('__gin__.dynamic_registration', 'block_recurrent.configs')
_BUILTIN_MACROS = ('gin.REQUIRED',)


def _config_classes() -> dict:
  """{'configs.ModelConfig': ModelConfig, ...}: every config dataclass a gin file may bind."""
  return {f'configs.{name}': value for name, value in vars(configs).items()
          if isinstance(value, type) and dataclasses.is_dataclass(value) and value.__module__ == configs.__name__}


def _key(st) -> str:
  return f'{st.selector}.{st.arg_name}' if st.arg_name else st.selector


def _check_statement(st, where: str) -> None:
  """Configuration only: imports of block_recurrent.configs, fields of its config classes, literal values."""
  if isinstance(st, config_parser.ImportStatement):
    if st.module not in _IMPORTS:
      raise configs.ConfigError(f'{where} imports {st.module}: a gin file may import only block_recurrent.configs '
                                '(it binds configuration and runs no code): remove the import')
  elif isinstance(st, config_parser.BindingStatement):
    if st.scope:
      raise configs.ConfigError(f'{where} binds {st.scope}/{_key(st)}: gin scopes are not used here: bind '
                                f'{_key(st)} without the scope')
    if st.arg_name:  # `selector.field = value` (a binding without a field name defines a macro)
      classes = _config_classes()
      if st.selector not in classes:
        raise configs.ConfigError(f'{where} binds {_key(st)}, which is not a configuration field: bind a field '
                                  f'of {", ".join(classes)} (block_recurrent/configs.py)')
      fields = [f.name for f in dataclasses.fields(classes[st.selector])]
      if st.arg_name not in fields:
        close = difflib.get_close_matches(st.arg_name, fields, 1)
        raise configs.ConfigError(f"{st.selector} doesn't have a parameter named {st.arg_name!r} ({where}): "
                                  + (f'did you mean {close[0]!r}?' if close else
                                     f'its fields are {", ".join(fields)}'))
    _check_value(st.value, f'{where} sets {_key(st)} to')


def _check_value(value, where: str) -> None:
  """where: 'FILE line N sets KEY to', completed by the value that is not allowed."""
  if isinstance(value, _Reference):
    raise configs.ConfigError(f'{where} {value}, a reference gin would call: gin files here hold literal values '
                              'only (numbers, strings, booleans, None, lists, tuples, dicts, %macros)')
  if isinstance(value, dict):
    for k, v in value.items():
      _check_value(k, where)
      _check_value(v, where)
  elif isinstance(value, (list, tuple)) and not isinstance(value, _Macro):
    for v in value:
      _check_value(v, where)


def _macros(value) -> list[str]:
  if isinstance(value, _Macro):
    return [value.name]
  if isinstance(value, dict):
    return [m for k, v in value.items() for m in _macros(k) + _macros(v)]
  if isinstance(value, (list, tuple)) and not isinstance(value, _Reference):
    return [m for v in value for m in _macros(v)]
  return []


def _statements(source, where: str) -> list:
  try:
    return list(config_parser.ConfigParser(source, _Delegate()))
  except SyntaxError as e:
    raise configs.ConfigError(f'bad gin syntax in {where} line {e.lineno}: {e.msg}') from None


def _bindings(path: str, ancestors: tuple[str, ...] = ()):
  """Yields (key, value, file, line, files that include this one) for a gin file and its includes."""
  if path in ancestors:
    raise configs.ConfigError(f'gin file {path} includes itself (via {" -> ".join(ancestors)}): remove the include')
  try:
    with open(path, encoding='utf-8') as f:
      statements = _statements(f, path)
  except OSError as e:
    raise errors.IOFailure(f'cannot read gin file {path}: {e.strerror}') from None
  except UnicodeDecodeError as e:
    raise configs.ConfigError(f'gin file {path} is not UTF-8 text (byte {e.start}): give a gin text file') from None
  for st in statements:
    where = f'{path} line {st.location.line_num}'
    _check_statement(st, where)
    if isinstance(st, config_parser.IncludeStatement):
      yield from _bindings(resolve(st.filename, included_by=where), ancestors + (path,))
    elif isinstance(st, config_parser.BindingStatement):
      yield _key(st), st.value, path, st.location.line_num, ancestors + (path,)


def check_conflicts(gin_files: Sequence[str]) -> None:
  """Fails on two gin files that set one binding to different values when neither includes the other.

  Experiments compose files that each set their own knobs, so a contradiction (say size/tiny.gin and
  size/small.gin both included) is a mistake gin would silently resolve by order. Allowed: a file
  overriding what its own includes set, anything overriding base.gin (the shared defaults), a later
  --gin_file overriding an earlier one, and --gin_param overriding everything.
  """
  _checked_bindings(gin_files, ())


_WHERE: dict[str, str] = {}  # binding key -> where its value in force was set (file and line, or --gin_param)


def _checked_bindings(gin_files: Sequence[str], gin_params: Sequence[str]) -> list[tuple[str, object, str]]:
  """(key, value, where) of every binding of the files and params in order, each statement checked (see
  _check_statement), contradictions inside one file's includes and undefined macros rejected."""
  out = []
  for top in gin_files:
    seen: dict[str, tuple] = {}
    for key, value, path, line, chain in _bindings(resolve(top)):
      out.append((key, value, f'{path} line {line}'))
      if key in seen:
        old_value, old_path, old_line = seen[key]
        overridable = old_path in chain or pathlib.Path(old_path).name == 'base.gin'
        if old_value != value and not overridable:
          raise configs.ConfigError(
              f'conflicting gin bindings for {key}: {old_path}:{old_line} sets {_text(old_value)}, '
              f'{path}:{line} sets {_text(value)} (both included by {top}); keep one, or override with '
              f'--gin_param')
      seen[key] = (value, path, line)
  for param in gin_params:
    where = f'--gin_param {param!r}'
    for st in _statements(param, where):
      _check_statement(st, where)
      if isinstance(st, config_parser.IncludeStatement):
        raise configs.ConfigError(f'{where} includes a file: pass it as --gin_file={st.filename}')
      if isinstance(st, config_parser.BindingStatement):
        out.append((_key(st), st.value, where))
  defined = {key for key, _, _ in out if '.' not in key}
  for key, value, where in out:
    for name in _macros(value):
      if name not in defined and name not in _BUILTIN_MACROS:
        raise configs.ConfigError(f'{where} uses the macro %{name}, which no gin file defines: add a line '
                                  f'`{name} = <value>` or write the value itself')
  return out


def _text(value) -> str:
  return str(value) if isinstance(value, (_Reference, _Macro)) else repr(value)


def parse(gin_files: Sequence[str] = (), gin_params: Sequence[str] = ()) -> None:
  """Clears any earlier config and parses these files and bindings (later ones win).

  Contradictions inside one file's includes fail first (see check_conflicts)."""
  _plain_files_only()
  checked = _checked_bindings(gin_files, gin_params)
  _WHERE.clear()
  _WHERE.update({key: where for key, _, where in checked})
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
    raise configs.ConfigError(f'bad gin configuration: {errors.one_line(e, 4)}') from None


def bound_model_config() -> configs.ModelConfig:
  """The ModelConfig that the parsed gin bindings describe."""
  return bound(configs.ModelConfig)


def bound(config_class):
  """An instance of a config dataclass with the parsed gin bindings applied (defaults if none name it)."""
  try:
    configurable = gin.get_configurable(config_class)
  except ValueError:  # no gin file or binding mentions the class: its defaults
    return config_class()
  name = f'configs.{config_class.__name__}'
  annotations = {f.name: f.type for f in dataclasses.fields(config_class)}
  for field, value in gin.get_bindings(config_class, resolve_references=False).items():
    expected = annotations.get(field)
    if isinstance(expected, str) and not _fits(value, expected):
      kinds = ' or '.join(_KINDS.get(a.strip().split('[')[0], a.strip()) for a in expected.split('|'))
      raise configs.ConfigError(f'{name}.{field} must be {kinds}, got {value!r} '
                                f'({_WHERE.get(f"{name}.{field}", "gin bindings")})')
  try:
    return configurable()
  except configs.ConfigError as e:
    message = str(e).splitlines()[0]
    found = {field: re.search(rf'\b{field}\b', message) for field in annotations if f'{name}.{field}' in _WHERE}
    mentioned = [f'{field} in {_WHERE[f"{name}.{field}"]}'
                 for field in sorted((f for f in found if found[f]), key=lambda f: found[f].start())]
    raise configs.ConfigError(message + (f' (set: {"; ".join(mentioned[:3])})' if mentioned else '')) from None
  except Exception as e:  # pylint: disable=broad-except  (gin wraps what the bindings make fail)
    raise configs.ConfigError(f'bad gin bindings for {name}: {errors.one_line(e, 4)}') from None


_KINDS = {'int': 'an integer', 'float': 'a number', 'str': 'a string', 'bool': 'True or False', 'None': 'None',
          'tuple': 'a tuple such as (1, 2)'}


def _fits(value, annotation: str) -> bool:
  """Whether a bound literal suits a field's annotation (a string under `from __future__ import
  annotations`); gin's macros, and annotations other than these plain ones, are not checked."""
  if not isinstance(value, (int, float, str, type(None), list, tuple, dict)):
    return True
  for alternative in annotation.split('|'):
    base = alternative.strip().split('[')[0]
    if base not in _KINDS:
      return True
    if ((base == 'int' and isinstance(value, int) and not isinstance(value, bool))
        or (base == 'float' and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (base == 'str' and isinstance(value, str)) or (base == 'bool' and isinstance(value, bool))
        or (base == 'None' and value is None) or (base == 'tuple' and isinstance(value, (tuple, list)))):
      return True
  return False


def bound_data_config() -> configs.DataConfig:
  return bound(configs.DataConfig)


def bound_configs() -> tuple[configs.ModelConfig, configs.DataConfig, configs.TrainConfig, configs.MeshConfig]:
  """The four configs of a run (model, data, training, mesh) that the parsed gin bindings describe."""
  return bound_model_config(), bound_data_config(), bound(configs.TrainConfig), bound(configs.MeshConfig)


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
  except errors.BadInput as e:
    print(f'{prog}: error: {e}', file=sys.stderr)
    return None
