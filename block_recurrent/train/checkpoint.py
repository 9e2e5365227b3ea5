"""Orbax checkpoints (the only module that imports Orbax): async saves, keep the last N, verified restores.

A checkpoint holds everything needed to continue exactly: the train state (params, optimiser state, step,
RNG, train and eval carries), the data cursor (JSON) and an integrity record (JSON): a 64-bit digest of
every array of the state, computed on the devices from the global array (so it does not depend on the
mesh or the number of hosts), and a SHA-256 of the cursor. Restore recomputes the digests and checks that
every floating-point value is finite. A checkpoint that cannot be read, fails its digests or holds
non-finite values is skipped for the previous one with a warning; the owner of the workdir (brt-train)
also moves it aside, into CHECKPOINTS_set_aside/, so that the run can write that step again. Nothing is
ever deleted but Orbax's rotation of old checkpoints and the temporary folders of interrupted saves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from block_recurrent import errors
from block_recurrent.errors import ConfigError

INTEGRITY_VERSION = 1


class CheckpointMismatch(ConfigError):
  """A readable checkpoint whose arrays differ from what the config builds (another model, batch, optimiser)."""

  def __init__(self, location: str, detail: str, changed: str = ''):
    """changed: the settings that differ from the workdir's config.gin, when they are known."""
    super().__init__(f'checkpoint {location} does not fit this config: {changed} ({detail}): use the settings it '
                     'was saved with, or a new --workdir' if changed else
                     f'checkpoint {location} does not fit this config ({detail}): use a new --workdir or the '
                     'config it was trained with')
    self.location, self.detail = location, detail


def path(location) -> epath.Path:
  """A workdir or checkpoint location: a local folder (made absolute) or a URL such as gs://bucket/run,
  which Orbax, TensorBoard and the metrics writer all read and write through the same epath API."""
  location = str(location)
  return epath.Path(location) if '://' in location else epath.Path(location).resolve()


class Checkpointer:

  def __init__(self, directory, *, keep: int, every: int, create: bool = True):
    """create=True: the workdir's owner (brt-train), which makes the folder, saves, and moves aside the
    checkpoints it finds corrupted. create=False opens another run's checkpoints to read: nothing is made,
    moved or deleted there (keep must then exceed the number of checkpoints)."""
    self.directory = path(directory)
    self.owner = create
    if create:
      try:
        self.directory.mkdir(parents=True, exist_ok=True)
      except OSError as e:
        raise errors.IOFailure(f'cannot create checkpoint folder {self.directory}: {e.strerror}') from None
      if jax.process_index() == 0 and '://' not in str(self.directory):  # found now, not after every step ran
        probe = self.directory / f'.write_test.{os.getpid()}'
        try:
          probe.write_text('')
          probe.unlink()
        except OSError as e:
          raise errors.IOFailure(f'cannot write checkpoints to {self.directory}: {e.strerror}: make it writable or '
                                 'give another --workdir') from None
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1),
                                           enable_async_checkpointing=True, create=create)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

  @property
  def set_aside_folder(self) -> epath.Path:
    return self.directory.parent / f'{self.directory.name}_set_aside'

  def save(self, step: int, state, cursor: dict, *, force: bool = False) -> bool:
    self.remove_incomplete()
    if step in self.steps():  # only after a fall-back past an unreadable step; keep it rather than fail
      self.set_aside(step, 'replaced')
    integrity = {'version': INTEGRITY_VERSION, 'arrays': digests(state), 'cursor': _cursor_hash(cursor)}
    with self._writing():
      return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             data=ocp.args.JsonSave(cursor),
                                                             integrity=ocp.args.JsonSave(integrity)), force=force)

  @contextlib.contextmanager
  def _writing(self):
    """A failed write (a full disk, a folder made read-only mid-run; Orbax reports an asynchronous save's
    failure at the next save or wait) is one CheckpointWriteError naming the reason and the newest
    complete checkpoint, which stays as it was."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      reason = _os_reason(e)
      if reason is None:
        raise
      complete = [int(c.name) for c in self.directory.iterdir() if c.name.isdigit()] if self.directory.exists() else []
      newest = f'{self.directory}/{max(complete)}' if complete else 'none yet'
      raise CheckpointWriteError(f'cannot write checkpoints to {self.directory}: {reason}: free space or fix the '
                                 f'folder, then rerun to resume (the newest complete checkpoint: {newest})') from None

  def remove_incomplete(self) -> list[str]:
    """Deletes the temporary folders of interrupted saves (a process killed while Orbax was writing), but
    only those older than the newest complete checkpoint on disk: until a newer one exists they are
    evidence worth keeping (restore ignores them anyway), and a save still in flight is always newer.
    Returns the names removed."""
    children = list(self.directory.iterdir()) if self.directory.exists() else []
    complete = [int(c.name) for c in children if c.name.isdigit()]
    if not complete:
      return []
    removed = []
    for child in children:
      step, _, rest = child.name.partition('.')
      if rest.startswith('orbax-checkpoint-tmp') and step.isdigit() and int(step) < max(complete):
        child.rmtree(missing_ok=True)
        removed.append(child.name)
    if removed:
      logging.info('removed incomplete checkpoint folders %s (newest complete: %s)', removed, max(complete))
    return removed

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def set_aside(self, step: int, why: str) -> epath.Path:
    """Moves checkpoint `step` into CHECKPOINTS_set_aside/ (never deleted), out of Orbax's sight."""
    self.manager.wait_until_finished()
    folder = self.set_aside_folder
    name = f'{step}.{re.sub(r"[^a-z0-9]+", "_", why.lower())[:40]}.{time.strftime("%Y%m%dT%H%M%S")}'
    target = folder / name
    if jax.process_index() == 0:  # one process moves it; every process then sees it gone
      folder.mkdir(parents=True, exist_ok=True)
      n = 1
      while target.exists():  # the same step set aside twice within a second
        target, n = folder / f'{name}.{n}', n + 1
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
    self.manager.reload()
    return target

  def set_aside_from(self, first: int, why: str) -> list[tuple[int, epath.Path]]:
    """Moves aside every checkpoint of step >= first (after the saves in flight); returns (step, new place)."""
    self.manager.wait_until_finished()
    return [(step, self.set_aside(step, why)) for step in self.steps() if step >= first]

  def restore(self, abstract_state, step: int | None = None, *, before: int | None = None):
    """(step, state, cursor) of the newest sound checkpoint (or `step`; or the newest below `before`), or
    None if there is none.

    A checkpoint that cannot be read (truncated), fails its digests (corrupted) or holds non-finite values
    is skipped for the previous one, with a warning once an older one restored (the owner moves it aside).
    One that is readable but built for another config is a CheckpointMismatch. When none can be read that
    is an error, never a silent fresh start. A checkpoint that disappears while it is read (a live run
    rotating its checkpoints) is not blamed: the listing is read again."""
    skipped, vanished = [], 0
    while True:
      steps = self.steps()
      if step is not None and step not in steps:
        raise ConfigError(f'{self.directory} has no checkpoint at step {step} (it has '
                          f'{", ".join(map(str, steps)) or "none"}): pick one of those steps')
      candidates = [step] if step is not None else [s for s in steps[::-1] if before is None or s < before]
      candidates = [s for s in candidates if s not in {bad for bad, _ in skipped}]
      result, retry = None, False
      for s in candidates:
        try:
          result = self._restore_one(s, abstract_state)
          break
        except CheckpointMismatch:
          raise
        except Exception as e:  # pylint: disable=broad-except
          if not (self.directory / str(s)).exists() and vanished < 20:  # rotated away by a live run
            vanished, retry = vanished + 1, True
            time.sleep(0.2)
            self.manager.reload()
            break
          skipped.append((s, e if isinstance(e, _Unsound) else f'{type(e).__name__}: {_first_line(e)}'))
      if retry:
        continue
      break
    for bad, why in skipped:
      where = ''
      if self.owner and step is None:
        where = f'; moved it to {self.set_aside(bad, _reason(why))}'
      if result is not None:
        logging.warning('checkpoint %s/%s is incomplete, corrupted or unreadable (%s); restored %s/%s instead%s',
                        self.directory, bad, why, self.directory, result[0], where)
    if result is not None:
      return result
    if step is not None and skipped:
      raise errors.CorruptData(f'checkpoint {self.directory}/{step} cannot be read ({skipped[0][1]}): it is truncated '
                               'or corrupted; pick another step')
    if skipped:
      listed = '; '.join(f'step {bad}: {why}' for bad, why in skipped[:2]) + ('; ...' if skipped[2:] else '')
      aside = f' (moved to {self.set_aside_folder})' if self.owner and step is None else ''
      raise errors.CorruptData(f'no checkpoint in {self.directory} can be read ({listed}){aside}: they are truncated '
                               'or corrupted; restore them from a copy, or start afresh in a new --workdir')
    return None

  def _restore_one(self, s: int, abstract_state):
    mismatch = _structure_mismatch(self.manager, s, abstract_state)
    if mismatch:
      raise CheckpointMismatch(f'{self.directory}/{s}', mismatch)
    items = dict(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
    checked = (self.directory / str(s) / 'integrity').exists()
    if checked:
      items['integrity'] = ocp.args.JsonRestore()
    restored = self.manager.restore(s, args=ocp.args.Composite(**items))
    state, cursor = restored['state'], restored['data']
    now, nonfinite = examine(state)
    if checked:
      record = restored['integrity']
      bad = [k for k, v in record.get('arrays', {}).items() if now.get(k) != v]
      if bad or set(now) != set(record.get('arrays', {})):
        raise _Unsound(f'{len(bad)} array(s) fail their checksums, e.g. {(bad or sorted(set(now)))[0]}')
      if record.get('cursor') != _cursor_hash(cursor):
        raise _Unsound('the data cursor fails its checksum')
    else:
      logging.warning('checkpoint %s/%s has no checksums (written by an older version): only checked for '
                      'non-finite values', self.directory, s)
    if nonfinite:
      raise _Unsound(f'non-finite values in {nonfinite}')
    return s, state, cursor

  def wait(self) -> None:
    with self._writing():
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


class CheckpointWriteError(errors.IOFailure):
  """A checkpoint could not be written (disk full, permissions): the message says why and what is safe."""


def _os_reason(e: BaseException) -> str | None:
  """The operating system's reason in a failed write ('No space left on device'), or None if e is not one."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  match = re.search(r'(?:Failed to write|Failed writing|Error writing)[^\n]*?: ([A-Z][a-z][^:\[\n]*?) \[os_error_code', str(e))
  if match:
    return match.group(1)
  match = re.search(r': ([A-Z][a-z][^:\[\n]*?) \[os_error_code', str(e))
  return match.group(1) if match else None


class _Unsound(Exception):
  """A checkpoint that was read but is not what was saved (checksums) or cannot be a train state."""


def _reason(why) -> str:
  return 'corrupted' if isinstance(why, _Unsound) else 'unreadable'


def _handlers() -> dict:
  return {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler(),
          'integrity': ocp.JsonCheckpointHandler()}


# --- integrity ------------------------------------------------------------------------------------------------

def _bits(x: jax.Array) -> jax.Array:
  """The array's bit pattern as uint32 (narrower types widened, booleans as 0/1)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  width = x.dtype.itemsize
  if width == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[width]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _mix(v: jax.Array) -> jax.Array:
  v = v ^ (v >> 16)
  v = v * jnp.uint32(0x7FEB352D)
  v = v ^ (v >> 15)
  v = v * jnp.uint32(0x846CA68B)
  return v ^ (v >> 16)


def _leaf_digest(x: jax.Array) -> jax.Array:
  """Two uint32 sums over (position, bits) pairs: exact under any partitioning (integer addition wraps and
  commutes), and a flipped, swapped or shifted value changes them."""
  bits = _bits(x)
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in range(x.ndim - 1, -1, -1):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2 ** 32)
    stride *= x.shape[axis]
  a = _mix(bits ^ _mix(index * jnp.uint32(2) + jnp.uint32(1)))
  b = _mix(bits + index * jnp.uint32(0x9E3779B9))
  return jnp.stack([jnp.sum(a, dtype=jnp.uint32), jnp.sum(b, dtype=jnp.uint32)])


@jax.jit
def _digest_arrays(leaves):
  sums = [_leaf_digest(x) for x in leaves]
  finite = [jnp.all(jnp.isfinite(x)) for x in leaves]
  return sums, finite


def _host(x) -> np.ndarray:
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _paths_and_leaves(tree):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def digests(tree) -> dict[str, str]:
  """{leaf path: 16 hex digits} of every array of a (possibly sharded) tree."""
  return examine(tree)[0]


def examine(tree) -> tuple[dict[str, str], str]:
  """(digests, the first leaves (up to 3) holding NaN or infinity, or ''), in one compiled pass."""
  names, leaves = _paths_and_leaves(tree)
  sums, finite = _digest_arrays(leaves)
  bad = [n for n, ok in zip(names, finite) if not bool(_host(ok))]
  return ({n: ''.join(f'{int(v):08x}' for v in _host(d)) for n, d in zip(names, sums)},
          ', '.join(bad[:3]) + (', ...' if bad[3:] else ''))


def _cursor_hash(cursor) -> str:
  return hashlib.sha256(json.dumps(cursor, sort_keys=True).encode()).hexdigest()


def _keys(path) -> tuple:
  return tuple(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def _structure_mismatch(manager, step: int, abstract_state) -> str:
  """'' if the checkpoint's stored arrays have the target's tree, shapes and dtypes; else the first
  difference. A checkpoint whose metadata cannot be read is not a mismatch (restore then reports it
  unreadable)."""
  try:
    stored = manager.item_metadata(step)['state']
  except Exception:  # pylint: disable=broad-except
    return ''
  if stored is None:
    return ''
  have = {_keys(p): x for p, x in jax.tree_util.tree_flatten_with_path(stored)[0]}
  want = {_keys(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
  for key in sorted(set(have) | set(want)):
    name = '.'.join(key)
    if key not in have:
      return f'{name} is not in the checkpoint'
    if key not in want:
      return f'the checkpoint has {name}, which this config does not'
    h, w = have[key], want[key]
    if tuple(h.shape) != tuple(w.shape):
      return f'{name} has shape {tuple(h.shape)} in the checkpoint, {tuple(w.shape)} here'
  return ''


def _first_line(e: Exception) -> str:
  """The gist of an Orbax/TensorStore error: its first sentence (what follows is advice about Orbax's own
  options), and for a tree mismatch the first entry that differs."""
  lines = errors.lines(e)
  if not lines:
    return type(e).__name__
  gist = lines[0].split('. ')[0].rstrip('.')
  if gist.endswith(':') and len(lines) >= 4:
    gist += ' ' + ' '.join(lines[1:4])
  return re.sub(r"<class '(\w+)'>", r'\1', gist)[:300]


def read_raw(directory, steps=None) -> dict[int, dict]:
  """{step: {'state': nested arrays, 'data': cursor}} of the checkpoints under directory (default every one
  listed), restored without a target and read-only: what the fault harness and tests compare."""
  manager = ocp.CheckpointManager(path(directory), options=ocp.CheckpointManagerOptions(read_only=True))
  with manager:
    wanted = sorted(manager.all_steps()) if steps is None else list(steps)
    return {step: manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                data=ocp.args.JsonRestore()))
            for step in wanted}
