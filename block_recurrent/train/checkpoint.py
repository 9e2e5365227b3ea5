"""Orbax checkpoints (the only module that imports Orbax): async saves, keep the last N, resume.

A checkpoint holds everything needed to continue exactly: the train state (params, optimiser state, step,
RNG, train and eval carries) and the data cursor (JSON). An incomplete (e.g. truncated) latest
checkpoint is skipped with a warning in favour of the previous complete one.
"""

from __future__ import annotations

import logging

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
    return self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           data=ocp.args.JsonSave(cursor)), force=force)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def restore(self, abstract_state, step: int | None = None):
    """(step, state, cursor) of the newest complete checkpoint (or `step`), or None if there is none."""
    candidates = [step] if step is not None else self.steps()[::-1]
    for s in candidates:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except
        if _incompatible(e):
          raise ConfigError(f'checkpoint {self.directory}/{s} does not fit this config ({_first_line(e)}): '
                            'use a new --workdir or the config it was trained with') from None
        logging.warning('checkpoint %s/%s is incomplete or unreadable (%s); trying the previous one',
                        self.directory, s, _first_line(e))
        continue
      return s, restored['state'], restored['data']
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _incompatible(e: Exception) -> bool:
  text = str(e).lower()
  return any(w in text for w in ('shape', 'structure', 'mismatch', 'missing key', 'do not match'))

