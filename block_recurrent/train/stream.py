"""The training data stream of one process: its shards of DocumentBatchers, the whole stream's JSON cursor
(gathered from every process, saved with each checkpoint), and batches concatenated or padded across shards."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from block_recurrent import configs, distributed
from block_recurrent.data import segments, tasks


def sharded_cursor(cursor: dict) -> dict:
  """A checkpoint's data cursor as {'data_shards': S, 'shards': {str(k): cursor of shard k}} (checkpoints
  written before data shards existed hold one batcher's cursor: one shard)."""
  if 'shards' in cursor:
    return cursor
  return {'data_shards': 1, 'shards': {'0': cursor}}


def train_batchers(data_cfg: configs.DataConfig, segment_length: int, cursor: dict | None) -> dict:
  """This process's shards of the training stream: {shard: DocumentBatcher}, restored from `cursor`."""
  pcount, pid = jax.process_count(), jax.process_index()
  saved = cursor['data_shards'] if cursor else None
  shards = data_cfg.data_shards or saved or pcount
  if saved is not None and saved != shards:
    raise configs.ConfigError(f'the checkpoint was written with DataConfig.data_shards={saved}, this run has '
                              f'{shards}: pass --gin_param=configs.DataConfig.data_shards={saved} (or 0)')
  if shards % pcount or data_cfg.batch_size % shards:
    raise configs.ConfigError(f'DataConfig.data_shards={shards} must be a multiple of the {pcount} processes and '
                              f'divide DataConfig.batch_size={data_cfg.batch_size}: pick another data_shards')
  per = shards // pcount
  batchers = {}
  for k in range(pid * per, (pid + 1) * per):
    docs = tasks.documents(data_cfg.task, 'train', data_dir=data_cfg.data_dir, spm_path=data_cfg.spm_path,
                           process_index=k, process_count=shards)
    batchers[k] = segments.DocumentBatcher(docs, batch_size=data_cfg.batch_size // shards,
                                           segment_length=segment_length, shuffle_seed=data_cfg.shuffle_seed,
                                           num_epochs=data_cfg.num_epochs)
    if cursor:
      batchers[k].restore(cursor['shards'][str(k)])
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
