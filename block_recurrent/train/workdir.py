"""A brt-train workdir, the one module that knows its layout: the lock that keeps a second trainer out, its
config.gin (written by brt-train, read back by brt-eval and brt-generate) and the history of the configs a
run was trained with, whether it has a checkpoint, and the restores that read it (brt-train's resume,
brt-eval, brt-generate and --load_dir), which name the settings that differ when a checkpoint does not fit.

    WORKDIR/.lock             held (flock) by the brt-train process that trains here; names it
    WORKDIR/config.gin        the bindings in force now (brt-eval and brt-generate read it)
    WORKDIR/config_history/   every config.gin this run was trained with before, named by when it was replaced
    WORKDIR/checkpoints/      one folder per saved step (block_recurrent/train/checkpoint.py)
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import pathlib
import socket
import time

from block_recurrent import configs, errors
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


def create(workdir) -> None:
  """Makes the workdir (and its parents) for brt-train."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise errors.IOFailure(f'cannot write to workdir {workdir}: {e.strerror}') from None


# --- checkpoints ----------------------------------------------------------------------------------------------

def checkpoints(workdir):
  """WORKDIR/checkpoints, the folder brt-train's Checkpointer saves in."""
  return ckpt_lib.path(workdir) / 'checkpoints'


def has_checkpoint(workdir) -> bool:
  """Whether workdir holds a checkpoint to read: a step folder in WORKDIR/checkpoints (whether it is complete
  and sound is the restore's to say). The one such check, for brt-eval, brt-generate and --load_dir."""
  folder = checkpoints(workdir)
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check_load_dir(load_dir: str) -> None:
  """--load_dir names a brt-train workdir with a checkpoint (brt-train checks it before anything is built)."""
  if not has_checkpoint(load_dir):
    raise configs.ConfigError(f'--load_dir {load_dir} has no checkpoints folder with a checkpoint in it: point it '
                              'at a brt-train workdir')


def read_checkpoint(workdir, target, cfgs=(), step: int | None = None):
  """(step, state, cursor) of another run's newest (or `step`) sound checkpoint, or None if it has no complete
  one; read-only: nothing there is made, moved or deleted (brt-eval, brt-generate, --load_dir).

  A checkpoint of another config names the settings (of the config objects cfgs) that differ. A run
  training there right now may rotate its checkpoints while they are read: that failure says so."""
  checkpointer = ckpt_lib.Checkpointer(checkpoints(workdir), keep=1000, every=1, create=False)
  try:
    return restore(checkpointer, target, ckpt_lib.path(workdir), cfgs, step)
  except ckpt_lib.CheckpointMismatch:
    raise
  except errors.BadInput as e:
    live = holder(ckpt_lib.path(workdir))
    if not live:
      raise
    raise errors.IOFailure(f'{workdir} is being trained right now ({live}) and its checkpoints changed while they '
                           f'were read ({e}): run this again in a moment') from None
  finally:
    checkpointer.close()


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

def read_configs(workdir: str, gin_params=()):
  """(ModelConfig, DataConfig, TrainConfig, MeshConfig) a brt-train workdir was trained with (its config.gin),
  plus extra bindings."""
  from block_recurrent import ginconf  # pylint: disable=import-outside-toplevel  (gin: only when a command asks)
  config_file = ckpt_lib.path(workdir) / 'config.gin'
  if not config_file.is_file():
    raise configs.ConfigError(f'{config_file} not found: --workdir must be a folder brt-train wrote')
  if '://' in str(config_file):  # gin reads local files: a bucket's config.gin is read through a copy
    import tempfile  # pylint: disable=import-outside-toplevel
    local = pathlib.Path(tempfile.mkdtemp()) / 'config.gin'
    local.write_text(config_file.read_text())
    config_file = local
  ginconf.parse([str(config_file)], gin_params)
  return ginconf.bound_configs()


def saved_bindings(workdir) -> dict[str, object]:
  """The bindings of WORKDIR/config.gin (see bindings)."""
  return bindings((ckpt_lib.path(workdir) / 'config.gin').read_text())


def record_config(workdir, config_text: str, step: int) -> str | None:
  """Writes config_text to WORKDIR/config.gin; a different one already there (a resume with other settings)
  is first kept as config_history/config.<time>.step<N>.gin. Returns that file's name, or None."""
  current = workdir / 'config.gin'
  kept = None
  try:
    if current.exists():
      old = current.read_text()
      if old.strip() != config_text.strip():
        history = workdir / 'config_history'
        history.mkdir(parents=True, exist_ok=True)
        kept = history / f'config.{time.strftime("%Y%m%dT%H%M%S", time.gmtime())}.step{step}.gin'
        kept.write_text(old)
    current.write_text(config_text)
  except OSError as e:
    raise errors.IOFailure(f'cannot write to workdir {workdir}: {e.strerror}') from None
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
