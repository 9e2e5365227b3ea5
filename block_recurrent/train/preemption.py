"""SIGTERM (how Cloud TPU announces a preemption), SIGINT and SIGHUP (a closed terminal) while training.

The first signal only sets a flag: the loop finishes its step, writes a checkpoint, flushes its metrics
and returns, and brt-train exits with status 0. A second signal exits at once (status 128 + signal).
Orbax writes a checkpoint into a temporary folder and renames it when it is complete, so an exit at any
moment leaves at most an incomplete folder, which restore ignores. Light on purpose (no jax): brt-train
installs the handlers before its heavy imports, so that a signal during start-up is not lost either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal was closed


class Signals:

  def __init__(self):
    self.received: str | None = None
    self._previous: dict = {}

  def pending(self) -> bool:
    return self.received is not None

  def _handle(self, signum, frame):
    del frame
    if self.received is not None:
      os.write(2, f'received {signal.Signals(signum).name} again: exiting now\n'.encode())
      os._exit(128 + signum)
    self.received = signal.Signals(signum).name

  def install(self) -> bool:
    """Only the main thread can install handlers; elsewhere signals keep their default behaviour."""
    if threading.current_thread() is not threading.main_thread():
      return False
    for sig in SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return True

  def uninstall(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


_active: Signals | None = None


def install() -> Signals:
  """Handles the signals for the rest of the process (brt-train calls this first thing)."""
  global _active  # pylint: disable=global-statement
  if _active is None:
    _active = Signals()
    _active.install()
  return _active


def uninstall() -> None:
  """Gives the signals back their previous handlers (after an in-process brt-train call)."""
  global _active  # pylint: disable=global-statement
  if _active is not None:
    _active.uninstall()
    _active = None


@contextlib.contextmanager
def handling():
  """The process's handler if install() was called, else one installed for the duration."""
  if _active is not None:
    yield _active
    return
  signals = Signals()
  signals.install()
  try:
    yield signals
  finally:
    signals.uninstall()
