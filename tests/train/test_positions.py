"""train/positions.py: the buckets of brt-eval --by_position partition the positions, and what is added to
them adds up."""

import numpy as np
import pytest

from block_recurrent.data import segments
from block_recurrent.train import positions


def test_edges_are_log_spaced_from_64_and_cover_the_longest_document():
  assert positions.edges(1) == [0, 64]
  assert positions.edges(64) == [0, 64]
  assert positions.edges(65) == [0, 64, 256]
  assert positions.edges(433_411) == [0, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576]


def test_buckets_add_up_to_every_token_scored_in_any_order_of_calls():
  rng = np.random.default_rng(0)
  docs = [segments.Document(tokens=np.ones(n, np.int32), num_bytes=rng.integers(0, 4, n).astype(np.int32), doc_id=i)
          for i, n in enumerate((300, 40, 1500))]
  by = positions.ByPosition(docs)
  nll = {d.doc_id: rng.random(len(d.tokens)) for d in docs}
  for d in docs:  # in pieces of 32, as evaluate() calls it, documents interleaved
    for first in range(0, len(d.tokens), 32):
      part = slice(first, first + 32)
      by(d.doc_id, first, d.tokens[part], nll[d.doc_id][part])
  rows = by.rows()
  assert [(r['first'], r['last']) for r in rows] == [(0, 63), (64, 255), (256, 1023), (1024, 4095)]
  assert [r['tokens'] for r in rows] == [64 + 40 + 64, 192 + 192, 44 + 768, 476]
  assert sum(r['bytes'] for r in rows) == sum(int(d.num_bytes.sum()) for d in docs)
  assert sum(r['bits'] for r in rows) == pytest.approx(sum(v.sum() for v in nll.values()) / np.log(2))
  first_bucket = sum(d.num_bytes[:64].sum() for d in docs)
  assert rows[0]['bytes'] == first_bucket and rows[0]['bits_per_byte'] == pytest.approx(rows[0]['bits'] / first_bucket)
