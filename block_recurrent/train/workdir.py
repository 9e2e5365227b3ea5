"""A brt-train workdir's bookkeeping: the lock that keeps a second trainer out, the history of the configs a
run was trained with, and the settings that differ between a checkpoint's config and the one given now.

    WORKDIR/.lock             held (flock) by the brt-train process that trains here; names it
    WORKDIR/config.gin        the bindings in force now (brt-eval and brt-generate read it)
    WORKDIR/config_history/   every config.gin this run was trained with before, named by when it was replaced
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import socket
import time

from block_recurrent import configs
from block_recurrent.train import checkpoint as ckpt_lib

LOCK_NAME = '.lock'


class Lock:
  """An exclusive lock on a local workdir, held for the life of the process that takes it (the kernel
  drops it when that process dies, so a stale lock of a killed run is simply taken over). Object stores
  (gs://...) have no locks: there the rule is one trainer per workdir, by convention."""

  def __init__(self, workdir):
    self.workdir, self._fd = workdir, None

  def acquire(self) -> 'Lock':
    if '://' in str(self.workdir):
      return self
    import fcntl  # pylint: disable=import-outside-toplevel
    path = os.path.join(str(self.workdir), LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise configs.ConfigError(f'workdir {self.workdir} is in use by {holder(self.workdir) or "another process"}: '
                                'wait for it to finish or stop it, or give another --workdir') from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                             'since': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}).encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the file drops the flock
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def holder(workdir) -> str:
  """'brt-train pid N on HOST since T' while a live process holds the workdir's lock, else ''."""
  if '://' in str(workdir):
    return ''
  import fcntl  # pylint: disable=import-outside-toplevel
  path = os.path.join(str(workdir), LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return ''
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
      fcntl.flock(fd, fcntl.LOCK_UN)
      return ''  # nobody holds it
    except BlockingIOError:
      pass
    try:
      info = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
    except ValueError:
      info = {}
    return (f"brt-train pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"
            if info else 'another brt-train process')
  finally:
    os.close(fd)


def restore(checkpointer, target, workdir, cfgs, step: int | None = None):
  """checkpointer.restore(target, step); a checkpoint of another config names the settings (of the config
  objects cfgs) that differ from the workdir's config.gin."""
  try:
    return checkpointer.restore(target, step)
  except ckpt_lib.CheckpointMismatch as e:
    saved = workdir / 'config.gin'
    changed = settings_diff(saved.read_text(), *cfgs) if saved.exists() else ''
    if not changed:
      raise
    raise ckpt_lib.CheckpointMismatch(e.location, e.detail, changed) from None


# --- configs --------------------------------------------------------------------------------------------------

def record_config(workdir, config_text: str, step: int) -> str | None:
  """Writes config_text to WORKDIR/config.gin; a different one already there (a resume with other settings)
  is first kept as config_history/config.<time>.step<N>.gin. Returns that file's name, or None."""
  current = workdir / 'config.gin'
  kept = None
  if current.exists():
    old = current.read_text()
    if old.strip() != config_text.strip():
      history = workdir / 'config_history'
      history.mkdir(parents=True, exist_ok=True)
      kept = history / f'config.{time.strftime("%Y%m%dT%H%M%S", time.gmtime())}.step{step}.gin'
      kept.write_text(old)
  current.write_text(config_text)
  return None if kept is None else str(kept)


def bindings(config_text: str) -> dict[str, object]:
  """{'ModelConfig.d_model': 32, ...} from a config.gin's text (values as Python literals where they parse)."""
  out, pending = {}, ''
  for line in config_text.splitlines():
    stripped = line.strip()
    if not pending and (not stripped or stripped.startswith(('#', 'from ', 'import '))):
      continue
    pending = f'{pending} {stripped}' if pending else stripped
    name, _, value = pending.partition('=')
    value = value.strip()
    if value.count('(') + value.count('[') + value.count('{') > value.count(')') + value.count(']') + value.count('}'):
      continue  # a value continued on the next line
    pending = ''
    name = name.strip().removeprefix('configs.')
    try:
      out[name] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[name] = value
  return out


def default(name: str):
  cls_name, _, field = name.partition('.')
  cls = getattr(configs, cls_name, None)
  if cls is None or not dataclasses.is_dataclass(cls):
    return None
  for f in dataclasses.fields(cls):
    if f.name == field:
      return f.default if f.default is not dataclasses.MISSING else None
  return None


def settings_diff(saved_text: str, *cfgs, limit: int = 4) -> str:
  """'ModelConfig.d_model was 32, now 48; ...': the settings of config objects (ModelConfig, DataConfig, ...)
  that differ from a saved config.gin's (a binding it leaves out is the field's default)."""
  saved = bindings(saved_text)
  changed = []
  for cfg in cfgs:
    for f in dataclasses.fields(cfg):
      name = f'{type(cfg).__name__}.{f.name}'
      before, now = saved.get(name, default(name)), getattr(cfg, f.name)
      if isinstance(before, list):
        before = tuple(before)
      if before != now and not (isinstance(now, tuple) and tuple(before or ()) == now):
        changed.append(f'{name} was {before!r}, now {now!r}')
  return '; '.join(changed[:limit]) + (f'; and {len(changed) - limit} more' if changed[limit:] else '')
