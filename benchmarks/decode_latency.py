"""Decode latency per token against the position in the document, and resident memory, for the
recurrent model; beside it, the cost of re-running the whole prefix for every token (what the PyTorch
port does).

    .venv/bin/python benchmarks/decode_latency.py [--positions 1024 16384 65536 --tokens 100 --rounds 5] [--full]

The document is reached with the segment form (whole segments with the carry passed on: exactly the
prefix re-run), turned into a decode state, and then `--tokens` single-token steps are timed per round.
The claim: the median latency at the last position is within 1.1x of the first, and memory stays flat.
`--full` decodes the paper's 150M Rec:fixed:skip instead of the small model (a TPU/GPU host). Writes
results/decode_latency.{md,json,png}.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # first: puts the checkout on sys.path
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import api, ginconf
from block_recurrent.model import decode


def rss_mib() -> float:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) / 1024
  return float('nan')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--gin_file', default='gin/experiments/small/rec_fixed_skip.gin')
  parser.add_argument('--positions', type=int, nargs='+', default=[1024, 16384, 65536])
  parser.add_argument('--tokens', type=int, default=100, help='decode steps timed per round')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--long_run', type=int, default=3000, help='consecutive decode steps for the memory check')
  parser.add_argument('--full', action='store_true', help="the paper's 150M Rec:fixed:skip (a TPU/GPU host)")
  args = parser.parse_args()
  if args.full:
    args.gin_file = 'gin/experiments/paper/rec_fixed_skip.gin'

  cfg = ginconf.model_config([args.gin_file], ['configs.ModelConfig.dropout_rate = 0.0'])
  model = api.build_model(config=cfg, seed=0)
  params, apply, graphdef = api.functional(model)
  n = cfg.segment_length
  if any(p % n for p in args.positions):
    raise SystemExit(f'positions must be multiples of the segment length {n}')
  rng = np.random.default_rng(0)
  text = rng.integers(3, cfg.vocab_size, (1, max(args.positions) + args.tokens)).astype(np.int32)

  step = jax.jit(lambda p, ds, tok: decode.step(nnx.merge(graphdef, p), ds, tok), donate_argnums=1)
  to_decode = jax.jit(lambda p, carry, pos: decode.from_carry(nnx.merge(graphdef, p), carry, pos))
  print(f'{args.gin_file}: d={cfg.d_model} L={cfg.total_layers} W={cfg.window} N={n} '
        f'S={cfg.num_states if cfg.recurrent_layers else "-"}; jax {jax.__version__} on '
        f'{jax.devices()[0].platform}')

  carry, reached, prefix_seconds = model.init_carry(1), 0, 0.0
  apply(params, text[:, :n], carry, np.array([True]))[0].block_until_ready()  # compile the segment form
  rows = []
  for position in sorted(args.positions):
    t0 = time.perf_counter()
    while reached < position:
      logits, carry = apply(params, text[:, reached:reached + n], carry, np.array([reached == 0]))
      reached += n
    jax.block_until_ready(carry)
    prefix_seconds += time.perf_counter() - t0
    per_token = []
    for _ in range(args.rounds):
      ds = to_decode(params, carry, jnp.full((1,), position, jnp.int32))
      logits, ds = step(params, ds, jnp.asarray(text[:, position]))  # warm (and compile once)
      jax.block_until_ready(logits)
      t0 = time.perf_counter()
      for i in range(1, args.tokens):
        logits, ds = step(params, ds, jnp.asarray(text[:, position + i]))
        logits.block_until_ready()
      per_token.append((time.perf_counter() - t0) / (args.tokens - 1))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(ds))
    rows.append((position, sorted(per_token), rss_mib(), state_bytes, prefix_seconds))

  table = common.table(
      ['position', 'decode ms/token (min / median / max)', 'resident MiB', 'decode state KiB',
       're-run prefix per token (s)'],
      [[f'{position:,}', common.spread([1000 * t for t in ts]), f'{rss:.0f}', f'{state_bytes / 1024:.0f}',
        f'{prefix:.2f}'] for position, ts, rss, state_bytes, prefix in rows])
  # Resident memory of decoding alone: many consecutive steps (crossing many block boundaries).
  ds = to_decode(params, carry, jnp.full((1,), reached, jnp.int32))
  logits, ds = step(params, ds, jnp.asarray(text[:, 0]))
  logits.block_until_ready()
  before = rss_mib()
  for i in range(args.long_run):
    logits, ds = step(params, ds, jnp.asarray(text[:, i % text.shape[1]]))
  logits.block_until_ready()
  lines = [f'Decode latency, {args.gin_file}: {args.rounds} rounds x {args.tokens} tokens per position; '
           f'{common.machine()}', '', table, '',
           f'resident memory across {args.long_run:,} consecutive decode steps ({args.long_run // cfg.window} '
           f'state updates): {before:.0f} -> {rss_mib():.0f} MiB']
  first, last = rows[0], rows[-1]
  ratio = statistics.median(last[1]) / statistics.median(first[1])
  lines.append(f'latency ratio {last[0]:,} / {first[0]:,} (medians): {ratio:.3f} (target <= 1.1); '
               f'resident memory {first[2]:.0f} -> {last[2]:.0f} MiB')
  lines.append(f're-running the prefix for one token at {last[0]:,}: {last[4]:.2f} s, '
               f'{last[4] / statistics.median(last[1]):,.0f}x the decode step')

  def draw(ax):
    positions = [r[0] for r in rows]
    ax.errorbar(positions, [1000 * statistics.median(r[1]) for r in rows],
                yerr=[[1000 * (statistics.median(r[1]) - r[1][0]) for r in rows],
                      [1000 * (r[1][-1] - statistics.median(r[1])) for r in rows]], fmt='o-', capsize=3)
    ax.set_xscale('log', base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel('position in the document (tokens)')
    ax.set_ylabel('ms per decoded token')
    ax.set_title('Decode latency against position (median, min-max)', fontsize=9)

  common.publish('decode_latency', '\n'.join(lines),
                 [{'position': r[0], 'seconds_per_token': r[1], 'rss_mib': r[2], 'state_bytes': r[3]} for r in rows],
                 draw)


if __name__ == '__main__':
  main()
