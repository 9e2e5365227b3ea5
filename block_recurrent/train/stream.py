"""The training data stream of one process: its shards of DocumentBatchers, the whole stream's JSON cursor
(gathered from every process, saved with each checkpoint), and batches concatenated or padded across shards.

Each shard's cursor also records where its documents came from (task, folder, SentencePiece model) and a
fingerprint of them, so that a resume on other data or settings is refused with the setting that differs,
instead of lanes continuing other documents mid-stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
import zlib
from typing import Any, Sequence

import jax
import numpy as np

from block_recurrent import configs
from block_recurrent.train import distributed
from block_recurrent.data import segments, tasks


def sharded_cursor(cursor: dict) -> dict:
  """A checkpoint's data cursor as {'data_shards': S, 'shards': {str(k): cursor of shard k}} (checkpoints
  written before data shards existed hold one batcher's cursor: one shard)."""
  if 'shards' in cursor:
    return cursor
  return {'data_shards': 1, 'shards': {'0': cursor}}


_RESUME = 'resume with the data it was trained on, or start a new --workdir'


def _path(path) -> str | None:
  return None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))


def check_settings(cursor: dict, data_cfg: configs.DataConfig, segment_length: int) -> None:
  """The settings that fix the stream's order, as a checkpoint's cursor recorded them, against this run's: a
  ConfigError naming the first that differs. Cheap (no data is read); train_batchers calls it first."""
  cursor = sharded_cursor(cursor)
  shard = next(iter(cursor['shards'].values()), None)
  then = shard.get('stream') if isinstance(shard, dict) else None
  if not isinstance(then, dict):
    return  # not a cursor the batcher knows: its restore says so
  source = shard.get('source') if isinstance(shard.get('source'), dict) else {}
  batch = then.get('batch_size')
  settings = [('DataConfig.task', source.get('task', data_cfg.task), data_cfg.task),
              ('DataConfig.batch_size', batch * cursor['data_shards'] if isinstance(batch, int) else batch,
               data_cfg.batch_size),
              ('DataConfig.shuffle_seed', then.get('shuffle_seed'), data_cfg.shuffle_seed),
              ('ModelConfig.segment_length', then.get('segment_length'), segment_length)]
  for field, was, now in settings:
    if was != now:
      raise configs.ConfigError(f'{field} was {was!r} in the checkpoint, now {now!r}: resume with the same value '
                                f'(--gin_param=configs.{field}={was!r}) or start a new --workdir')


def _check_source(saved: dict, source: dict, docs: list, data_cfg: configs.DataConfig) -> bool:
  """Whether the shard's saved cursor records its source (old ones do not); a ConfigError naming what changed
  if that is not this run's."""
  then = saved.get('source')
  if not isinstance(then, dict) or not isinstance(then.get('fingerprint'), dict):
    return False
  was, now = then['fingerprint'], source['fingerprint']
  if was == now:
    return True  # the same documents, even from a moved folder
  for key, differ in (('data_dir', 'its documents differ'), ('spm_path', 'it tokenises them differently')):
    if then.get(key) != source[key]:
      raise configs.ConfigError(f'DataConfig.{key} was {then.get(key)!r} in the checkpoint, now {source[key]!r}, '
                                f'and {differ}: {_RESUME}')
  what = segments.lane_change(saved, docs)  # a lane's own document, named, when it is one that changed
  if what is None and was.get('documents') != now['documents']:
    what = f"it had {was.get('documents')} documents, now {now['documents']}"
  elif what is None and was.get('names') != now['names']:
    what = f"a document was renamed (names fingerprint {was.get('names')} in the checkpoint, now {now['names']})"
  elif what is None:
    what = (f"the text of a document changed (fingerprint {was.get('contents')} in the checkpoint, now "
            f"{now['contents']})")
  where = f'in folder {data_cfg.data_dir}' if data_cfg.data_dir else f'of task {data_cfg.task}'
  raise configs.ConfigError(f'the training data {where} changed since the checkpoint: {what}: {_RESUME}')


def train_batchers(data_cfg: configs.DataConfig, segment_length: int, cursor: dict | None) -> dict:
  """This process's shards of the training stream: {shard: DocumentBatcher}, restored from `cursor`."""
  pcount, pid = jax.process_count(), jax.process_index()
  if cursor:
    check_settings(cursor, data_cfg, segment_length)
  saved = cursor['data_shards'] if cursor else None
  shards = data_cfg.data_shards or saved or pcount
  if saved is not None and saved != shards:
    raise configs.ConfigError(f'the checkpoint was written with DataConfig.data_shards={saved}, this run has '
                              f'{shards}: pass --gin_param=configs.DataConfig.data_shards={saved} (or 0)')
  if shards % pcount or data_cfg.batch_size % shards:
    raise configs.ConfigError(f'DataConfig.data_shards={shards} must be a multiple of the {pcount} processes and '
                              f'divide DataConfig.batch_size={data_cfg.batch_size}: pick another data_shards')
  per = shards // pcount
  batchers, unchecked = {}, False
  for k in range(pid * per, (pid + 1) * per):
    docs = tasks.documents(data_cfg.task, 'train', data_dir=data_cfg.data_dir, spm_path=data_cfg.spm_path,
                           process_index=k, process_count=shards)
    source = {'task': data_cfg.task, 'data_dir': _path(data_cfg.data_dir), 'spm_path': _path(data_cfg.spm_path),
              'fingerprint': fingerprint(docs)}
    batchers[k] = segments.DocumentBatcher(docs, batch_size=data_cfg.batch_size // shards,
                                           segment_length=segment_length, shuffle_seed=data_cfg.shuffle_seed,
                                           num_epochs=data_cfg.num_epochs, source=source)
    if cursor:
      shard_cursor = cursor['shards'][str(k)]
      unchecked |= isinstance(shard_cursor, dict) and not _check_source(shard_cursor, source, docs, data_cfg)
      batchers[k].restore(shard_cursor)
  if unchecked:
    logging.warning("the checkpoint's data cursor holds no fingerprint of its documents (it predates them): "
                    'a changed data folder cannot be detected on this resume')
  return batchers


def cursor(batchers: dict) -> dict:
  """The whole stream's cursor (every process's shards), the same on every process."""
  merged = {}
  for part in distributed.gather_json({str(k): b.state() for k, b in batchers.items()}):
    merged.update(part)
  return {'data_shards': len(merged), 'shards': merged}


def concat(parts: list) -> segments.Batch:
  return segments.Batch(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                           for f in dataclasses.fields(segments.Batch)})


def padding_batch(rows: int, segment_length: int) -> segments.Batch:
  """All-padding rows: what a process whose evaluation documents are used up feeds while others finish."""
  zeros = np.zeros((rows, segment_length), np.int32)
  return segments.Batch(inputs=zeros, targets=zeros, mask=zeros.astype(bool), start_of_sequence=np.zeros(rows, bool),
                        num_bytes=np.zeros(rows, np.int64), doc_ids=np.full(rows, -1, np.int64))


def fingerprint(documents: Sequence[segments.Document]) -> dict[str, Any]:
  """What a cursor is valid for: the number of documents, their names in order and their tokens.

  A renamed, added, removed, reordered or edited document changes it. It reads every document, so take
  it of a list; a CRC of each document's tokens (~4 GB/s) keeps it cheap next to reading them.
  """
  names, contents = hashlib.sha256(), hashlib.sha256()
  for document in documents:
    names.update((document.name or '').encode('utf-8', 'backslashreplace') + b'\0')
    contents.update(struct.pack('<qI', len(document), zlib.crc32(np.ascontiguousarray(document.tokens))))
  return {'documents': len(documents), 'names': names.hexdigest()[:16], 'contents': contents.hexdigest()[:16]}
