"""How every brt-* command ends on an error: one line on stderr, never a traceback unless --debug.

Bad input (a ConfigError: the message already says what is wrong, where, and what to do) exits with
status 2, like argparse's own usage errors; anything unexpected exits with 1 and names the exception.
KeyboardInterrupt and SystemExit pass through untouched.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from block_recurrent.configs import ConfigError


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--debug', action='store_true',
                      help='on an error, raise it with its full traceback instead of printing one line')


def one_line(text: str) -> str:
  return ' '.join(line.strip() for line in str(text).splitlines() if line.strip())


def guarded(prog: str, debug: bool, body: Callable[[], int]) -> int:
  """body()'s exit status, or 2 after `prog: error: <message>` for a ConfigError, or 1 after
  `prog: error: <Type>: <first line> (rerun with --debug ...)` for any other exception."""
  try:
    return body()
  except ConfigError as e:
    if debug:
      raise
    print(f'{prog}: error: {one_line(str(e)) or type(e).__name__}', file=sys.stderr, flush=True)
    return 2
  except Exception as e:  # pylint: disable=broad-except  (BaseException, e.g. Ctrl-C, is not caught)
    if debug:
      raise
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), '')[:300]
    print(f'{prog}: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)',
          file=sys.stderr, flush=True)
    return 1
