"""Metrics out: one JSON line per record in workdir/metrics.jsonl and TensorBoard event files in
workdir/tensorboard/<split>/ (via tf.summary; TensorFlow is already here for seqio). Only process 0 writes."""

from __future__ import annotations

import json
import pathlib

import jax

from block_recurrent import quiet


class MetricsWriter:

  def __init__(self, workdir, resumed_at: int | None = None):
    """workdir: a pathlib or epath Path (local, or a URL such as gs://...). resumed_at: the step a resumed
    run restarts from: rows of later steps (written before the interruption, and about to be written again)
    move to metrics.superseded.jsonl, so that metrics.jsonl has one row per split and step."""
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self._local = '://' not in str(workdir)
    self._jsonl = None
    self._lines: list[str] = []  # object stores cannot append: the file is rewritten whole
    if self.enabled:
      path = workdir / 'metrics.jsonl'
      if resumed_at is not None and path.exists():
        _supersede(workdir, resumed_at)
      if self._local:
        self._jsonl = path.open('a')
      elif path.exists():
        self._lines = path.read_text().splitlines(keepends=True)
    self._writers: dict = {}

  def write(self, split: str, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    line = json.dumps({'split': split, 'step': step, **metrics}) + '\n'
    if self._local:
      self._jsonl.write(line)
      self._jsonl.flush()
    else:
      self._lines.append(line)
      (self.workdir / 'metrics.jsonl').write_text(''.join(self._lines))
    tf = quiet.import_tensorflow()
    if split not in self._writers:
      self._writers[split] = tf.summary.create_file_writer(str(self.workdir / 'tensorboard' / split))
    # tf.summary.scalar needs the tensorboard package; the core op with the scalars plugin's metadata
    # writes the same event, so TensorBoard shows these as scalars without TensorFlow depending on it.
    metadata = tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(
        plugin_name='scalars'))
    with self._writers[split].as_default(step=step):
      for name, value in metrics.items():
        if isinstance(value, (int, float)):
          tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata)
    self._writers[split].flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      for w in self._writers.values():
        w.close()


def _supersede(workdir, step: int) -> None:
  path = workdir / 'metrics.jsonl'
  keep, later = [], []
  for line in path.read_text().splitlines(keepends=True):
    try:
      row_step = int(json.loads(line).get('step', 0))
    except (ValueError, AttributeError):
      row_step = 0  # a line cut short by a crash stays where it is
    (later if row_step > step else keep).append(line)
  if later:
    old = workdir / 'metrics.superseded.jsonl'
    old.write_text((old.read_text() if old.exists() else '') + ''.join(later))
    path.write_text(''.join(keep))


def read_events(folder) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in the TensorBoard event files under folder."""
  tf = quiet.import_tensorflow()
  out = []
  for path in sorted(pathlib.Path(folder).glob('events.out.tfevents.*')):
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
      event = tf.compat.v1.Event.FromString(record)
      for v in event.summary.value:
        out.append((event.step, v.tag, float(tf.make_ndarray(v.tensor))))
  return out
