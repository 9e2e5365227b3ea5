"""Loss by position in the document (brt-eval --by_position, brt-compare's per-position panel): every scored
token's bits summed into log-spaced buckets of its position from the document's start, tokens 0-63,
64-255, 256-1023, ... (each bucket 4x the one before), up to the longest document scored.

The buckets partition the evaluation: their tokens, bytes and bits add up to the whole (a test checks it).
"""

from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np

from block_recurrent import errors
from block_recurrent.train.loop_policy import LN2

FIRST = 64  # the first bucket's size
FACTOR = 4  # each bucket is FACTOR times the one before


def edges(longest: int) -> list[int]:
  """Bucket boundaries [0, 64, 256, ...], the last one past `longest` positions."""
  out = [0, FIRST]
  while out[-1] < longest:
    out.append(out[-1] * FACTOR)
  return out


class ByPosition:
  """Accumulates evaluate()'s per_token calls (doc_id, first position, targets, nll in nats) into buckets;
  docs: the documents being scored (their num_bytes give each token's bytes)."""

  def __init__(self, docs):
    self._bytes = {d.doc_id: d.num_bytes for d in docs}
    longest = max((len(d.num_bytes) for d in docs), default=1)
    if jax.process_count() > 1:  # every process buckets alike
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      longest = int(np.max(multihost_utils.process_allgather(np.asarray(longest))))
    self.edges = np.asarray(edges(longest))
    n = len(self.edges) - 1
    self.tokens, self.bytes, self.bits = np.zeros(n), np.zeros(n), np.zeros(n)

  def __call__(self, doc_id: int, first: int, targets, nll_nats) -> None:
    positions = first + np.arange(len(targets))
    bucket = np.searchsorted(self.edges, positions, side='right') - 1
    num_bytes = self._bytes[doc_id][positions]
    np.add.at(self.tokens, bucket, 1.0)
    np.add.at(self.bytes, bucket, num_bytes)
    np.add.at(self.bits, bucket, np.asarray(nll_nats, np.float64) / LN2)

  def rows(self) -> list[dict]:
    """One dict per bucket that holds tokens: first and last position, tokens, bytes, bits and the rates."""
    sums = np.stack([self.tokens, self.bytes, self.bits])
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      sums = np.sum(multihost_utils.process_allgather(sums), axis=0)
    out = []
    for i, (tokens, num_bytes, bits) in enumerate(sums.T):
      if tokens:
        out.append(dict(first=int(self.edges[i]), last=int(self.edges[i + 1]) - 1, tokens=int(tokens),
                        bytes=int(num_bytes), bits=float(bits), bits_per_token=float(bits / tokens),
                        bits_per_byte=float(bits / num_bytes) if num_bytes else math.nan))
    return out


def _span(row: dict) -> str:
  return f'{row["first"]}-{row["last"]}'


def table(rows: list[dict], title: str = 'by position in the document') -> str:
  """The buckets as an aligned text table."""
  lines = [f'{title}:', f'  {"positions":>15} {"tokens":>10} {"bytes":>10} {"bits/token":>11} {"bits/byte":>10}']
  for r in rows:
    lines.append(f'  {_span(r):>15} {r["tokens"]:>10} {r["bytes"]:>10} {r["bits_per_token"]:>11.4f} '
                 f'{r["bits_per_byte"]:>10.4f}')
  return '\n'.join(lines)


def difference_table(base: list[dict], other: list[dict], base_name: str, other_name: str) -> str:
  """other - base per bucket, in bits per byte (the buckets must be the same: the same documents)."""
  lines = [f'{other_name} - {base_name}, bits per byte by position in the document:',
           f'  {"positions":>15} {"tokens":>10} {base_name:>18} {other_name:>18} {"difference":>11}']
  for b, o in zip(base, other):
    lines.append(f'  {_span(b):>15} {b["tokens"]:>10} {b["bits_per_byte"]:>18.4f} {o["bits_per_byte"]:>18.4f} '
                 f'{o["bits_per_byte"] - b["bits_per_byte"]:>+11.4f}')
  return '\n'.join(lines)


def compare_table(named: dict[str, list[dict]]) -> str:
  """Several models' buckets on the same documents (markdown): the first model's bits per byte, and each
  other's difference to it."""
  names = list(named)
  first = named[names[0]]
  lines = ['| positions | tokens | ' + f'{names[0]} bits/byte | ' + ' | '.join(f'{n} - {names[0]}' for n in names[1:])
           + ' |', '|' + '---|' * (2 + len(names))]
  for i, row in enumerate(first):
    diffs = [named[n][i]['bits_per_byte'] - row['bits_per_byte'] if i < len(named[n]) else float('nan')
             for n in names[1:]]
    lines.append(f'| {_span(row)} | {row["tokens"]} | {row["bits_per_byte"]:.4f} | '
                 + ' | '.join(f'{d:+.4f}' for d in diffs) + ' |')
  return '\n'.join(lines)


def write_json(path, payload: dict) -> str:
  """Writes payload as JSON (process 0 only); returns the path."""
  path = pathlib.Path(path)
  if jax.process_index() == 0:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(payload, indent=1) + '\n')
    except OSError as e:
      raise errors.IOFailure(f'cannot write {path}: {e.strerror}; give another --json path') from None
  return str(path)
