"""How every brt-* command ends on an error: one line on stderr, never a traceback unless --debug.

Bad input (block_recurrent/errors.py: a ConfigError, an IOFailure or CorruptData; the message already says
what is wrong, where, and what to do) exits with status 2, like argparse's own usage errors; anything
unexpected exits with 1 and names the exception.
KeyboardInterrupt and SystemExit pass through untouched.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable

from block_recurrent.errors import BadInput, one_line


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--debug', action='store_true',
                      help='on an error, raise it with its full traceback instead of printing one line')


@contextlib.contextmanager
def _background_errors_kept_quiet():
  """Orbax and TensorStore also report a failed asynchronous checkpoint write from their own threads and
  callbacks, a traceback per array (hundreds of lines for a full disk); the command reports the failure
  once, as its error line. Those reports go to the log at debug level instead (--debug shows them). After
  a failure the hooks stay in place: TensorStore's callbacks keep failing until the process exits."""
  import logging  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  previous = threading.excepthook, sys.unraisablehook
  threading.excepthook = lambda args: logging.debug('in thread %s: %r', args.thread, args.exc_value)
  sys.unraisablehook = lambda unraisable: logging.debug('unraisable: %r', unraisable.exc_value)

  def orbax_errors_out(record: logging.LogRecord) -> bool:  # the failure itself comes back as the exception
    orbax = ('/orbax/' in record.pathname.replace('\\', '/') or str(record.msg).startswith('[process=')
             or record.name == 'asyncio')  # asyncio: the failed writes' tasks, collected at exit
    return not (record.levelno >= logging.ERROR and orbax)

  loggers = [logging.getLogger(), logging.getLogger('absl'), logging.getLogger('asyncio')]
  for logger in loggers:
    logger.addFilter(orbax_errors_out)
  yield  # after an error they stay: TensorStore's callbacks keep failing until the process exits
  threading.excepthook, sys.unraisablehook = previous
  for logger in loggers:
    logger.removeFilter(orbax_errors_out)


def guarded(prog: str, debug: bool, body: Callable[[], int]) -> int:
  """body()'s exit status, or 2 after `prog: error: <message>` for bad input (BadInput), or 1 after
  `prog: error: <Type>: <first line> (rerun with --debug ...)` for any other exception."""
  try:
    with contextlib.nullcontext() if debug else _background_errors_kept_quiet():
      return body()
  except BadInput as e:
    if debug:
      raise
    print(f'{prog}: error: {one_line(e)}', file=sys.stderr, flush=True)
    return 2
  except Exception as e:  # pylint: disable=broad-except  (BaseException, e.g. Ctrl-C, is not caught)
    if debug:
      raise
    first = one_line(str(e), 1)[:300]
    print(f'{prog}: error: {type(e).__name__}: {first} (rerun with --debug for the traceback)',
          file=sys.stderr, flush=True)
    return 1
