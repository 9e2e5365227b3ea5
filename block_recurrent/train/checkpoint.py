"""Orbax checkpoints (the only module that imports Orbax): async saves, keep the last N, resume.

A checkpoint holds everything needed to continue exactly: the train state (params, optimiser state, step,
RNG, train and eval carries) and the data cursor (JSON). An incomplete (e.g. truncated) latest
checkpoint is skipped with a warning in favour of the previous complete one.
"""

from __future__ import annotations

import logging
import re

import orbax.checkpoint as ocp
from etils import epath

from block_recurrent.configs import ConfigError


def path(location) -> epath.Path:
  """A workdir or checkpoint location: a local folder (made absolute) or a URL such as gs://bucket/run,
  which Orbax, TensorBoard and the metrics writer all read and write through the same epath API."""
  location = str(location)
  return epath.Path(location) if '://' in location else epath.Path(location).resolve()


class Checkpointer:

  def __init__(self, directory, *, keep: int, every: int, create: bool = True):
    """create=False opens another run's checkpoints read-only in intent: nothing is made or deleted there
    (keep must then exceed the number of checkpoints, which only saving would enforce anyway)."""
    self.directory = path(directory)
    if create:
      try:
        self.directory.mkdir(parents=True, exist_ok=True)
      except OSError as e:
        raise ConfigError(f'cannot create checkpoint folder {self.directory}: {e.strerror}') from None
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1),
                                           enable_async_checkpointing=True, create=create)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def save(self, step: int, state, cursor: dict, *, force: bool = False) -> bool:
    self.remove_incomplete()
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           data=ocp.args.JsonSave(cursor)), force=force)

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

  def restore(self, abstract_state, step: int | None = None):
    """(step, state, cursor) of the newest complete checkpoint (or `step`), or None if there is none.

    One that cannot be read (truncated, corrupted) is skipped for the previous one, with a warning once
    an older one restored; when none can be read that is an error, never a silent fresh start."""
    steps = self.steps()
    if step is not None and step not in steps:
      raise ConfigError(f'{self.directory} has no checkpoint at step {step} (it has '
                        f'{", ".join(map(str, steps)) or "none"}): pick one of those steps')
    skipped = []
    for s in [step] if step is not None else steps[::-1]:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        if _incompatible(e):
          raise ConfigError(f'checkpoint {self.directory}/{s} does not fit this config ({_first_line(e)}): '
                            'use a new --workdir or the config it was trained with') from None
        skipped.append((s, f'{type(e).__name__}: {_first_line(e)}'))
        continue
      for bad, why in skipped:
        logging.warning('checkpoint %s/%s is incomplete or unreadable (%s); restored %s/%s instead',
                        self.directory, bad, why, self.directory, s)
      return s, restored['state'], restored['data']
    if step is not None and skipped:
      raise ConfigError(f'checkpoint {self.directory}/{step} cannot be read ({skipped[0][1]}): it is truncated or '
                        'corrupted; pick another step')
    if skipped:
      listed = '; '.join(f'step {bad}: {why}' for bad, why in skipped[:2]) + ('; ...' if skipped[2:] else '')
      raise ConfigError(f'no checkpoint in {self.directory} can be read ({listed}): they are truncated or '
                        'corrupted; restore them from a copy, or move them away to start afresh')
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _first_line(e: Exception) -> str:
  """The gist of an Orbax/TensorStore error: its first sentence (what follows is advice about Orbax's own
  options), and for a tree mismatch the first entry that differs."""
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  if not lines:
    return type(e).__name__
  gist = lines[0].split('. ')[0].rstrip('.')
  if gist.endswith(':') and len(lines) >= 4:
    gist += ' ' + ' '.join(lines[1:4])
  return re.sub(r"<class '(\w+)'>", r'\1', gist)[:300]


def _incompatible(e: Exception) -> bool:
  text = str(e).lower()
  return any(w in text for w in ('shape', 'structure', 'mismatch', 'missing key', 'do not match'))



def read_raw(directory, steps=None) -> dict[int, dict]:
  """{step: {'state': nested arrays, 'data': cursor}} of the checkpoints under directory (default every one
  listed), restored without a target and read-only: what the fault harness and tests compare."""
  manager = ocp.CheckpointManager(path(directory), options=ocp.CheckpointManagerOptions(read_only=True))
  with manager:
    wanted = sorted(manager.all_steps()) if steps is None else list(steps)
    return {step: manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                data=ocp.args.JsonRestore()))
            for step in wanted}
