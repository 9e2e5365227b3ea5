"""The errors a user can act on, and the one way they become one line.

    BadInput        the family: the message says what is wrong, where, and what to do; every brt-* command
                    prints it as one line and exits with status 2 (block_recurrent/cli/contract.py)
      ConfigError   a configuration or an input that cannot work (flags, gin bindings, arguments)
      IOFailure     a file or folder that cannot be read or written (permissions, a full disk)
      CorruptData   data that was read but is not sound (a truncated or corrupted checkpoint)

BadInput is a ValueError, as ConfigError always was, so `except ValueError` still catches the whole family.
This module imports nothing of the package: configs.py and the data modules build their checks on it.
"""

from __future__ import annotations

import numbers


class BadInput(ValueError):
  """Input that cannot work, with a message that says what to change."""


class ConfigError(BadInput):
  """A configuration or an input that cannot work; the message says what to change."""


class IOFailure(BadInput):
  """A file or folder that cannot be read or written; the message names it, the reason and what is safe."""


class CorruptData(BadInput):
  """Data that was read but is not what was written (truncated, failed checksums, non-finite values)."""


def lines(message) -> list[str]:
  """message's non-blank lines (its str for an exception), stripped."""
  return [line.strip() for line in str(message).splitlines() if line.strip()]


def one_line(message, limit: int | None = None) -> str:
  """message's non-blank lines, stripped and joined by spaces (at most `limit` of them); for an exception
  with no text, its type's name."""
  text = ' '.join(lines(message)[:limit])
  if not text and isinstance(message, BaseException):
    return type(message).__name__
  return text


def check(ok: bool, message: str) -> None:
  """Raises ConfigError(message) unless ok."""
  if not ok:
    raise ConfigError(message)


def is_int(value, *, numpy: bool = False) -> bool:
  """An integer, never a bool; numpy=True also takes NumPy's integers (array elements, cursors read back)."""
  kinds = numbers.Integral if numpy else int
  return isinstance(value, kinds) and not isinstance(value, bool)
