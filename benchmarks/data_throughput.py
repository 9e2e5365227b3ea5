"""Tokens per second the data pipeline delivers on this CPU: seqio task -> documents -> sticky batches.

    .venv/bin/python benchmarks/data_throughput.py [--split train --batch 8 --segment 512]

Reports, for the byte and the SentencePiece task on the embedded PG-mini corpus, the time to read and
tokenise the split through seqio, and the rate of the document-sticky batcher alone (repeated
--rounds times: min/median/max). Compare with what training consumes (benchmarks/train_throughput.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

from block_recurrent.data import segments, tasks


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--split', default='train')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--segment', type=int, default=512)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  for name in ('pg_mini_bytes', 'pg_mini_tokens'):
    t0 = time.perf_counter()
    docs = tasks.documents(name, args.split)
    load = time.perf_counter() - t0
    total = sum(d.tokens.size for d in docs)
    rates = []
    for _ in range(args.rounds):
      batcher = segments.DocumentBatcher(docs, batch_size=args.batch, segment_length=args.segment,
                                         shuffle_seed=0, num_epochs=1)
      t0 = time.perf_counter()
      delivered = sum(int(batch.mask.sum()) for batch in batcher)
      rates.append(delivered / (time.perf_counter() - t0))
    assert delivered == total
    print(f'{name:15s} {len(docs)} docs, {total:,} tokens; seqio read+tokenise {load:.1f}s '
          f'({total / load:,.0f} tokens/s); batcher tokens/s min {min(rates):,.0f} '
          f'median {statistics.median(rates):,.0f} max {max(rates):,.0f}')


if __name__ == '__main__':
  main()
