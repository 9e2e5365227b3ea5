"""Training speed of every model family at one size, side by side in one run: tokens/s, step time, MFU,
and the paper's relative step time table (ratios to Slide:13L).

    .venv/bin/python benchmarks/train_throughput.py [--rounds 5 --steps 3 --tokens 2048] [--full]

All models are the small size (6 layers, d=256, 8 heads of 32, MLP 1024, byte vocabulary; W=128) and,
as in the paper, every step trains on the same number of tokens (`--tokens`, default 2048): segments of
N=512 for Slide, Rec, Feedback and the linear models (batch 4), N=W=128 for XL (batch 16) and N=W=512 for
XL with a 4x window (batch 4). Each round times `--steps` steps of the real train step (loss, backward,
Adafactor, the carry passed on) of every model in turn, so that the machine's load hits all alike; ratios
are taken within a round. `--full` measures the paper's 150M models (N=4096, W=512) instead: for a
TPU or GPU host. Targets: Rec:fixed:skip at most 1.15x Slide:13L and at most 0.6x XL with a 4x window.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common  # first: puts the checkout on sys.path
import jax
import jax.numpy as jnp
import numpy as np

from block_recurrent import configs, flops, ginconf, peak as peak_lib
from block_recurrent.train import optim, step as step_lib
from flax import nnx

SMALL = {  # name: (gin file, the paper's step time relative to Slide:13L where it reports one)
    'XL:W': ('gin/experiments/small/xl.gin', 0.88),
    'XL:4W': ('gin/experiments/small/xl_4x.gin', 2.11),
    'Slide:12L': ('gin/experiments/small/slide.gin', None),
    'Slide:13L': ('gin/experiments/small/slide13.gin', 1.00),
    'Rec:fixed:skip': ('gin/experiments/small/rec_fixed_skip.gin', 0.99),
    'Rec:lstm:dual': ('gin/experiments/small/rec_lstm_dual.gin', None),
    'Feedback:fixed:skip': ('gin/experiments/small/feedback_fixed_skip.gin', None),
    'ReLiT': ('gin/experiments/small/relit.gin', None),
    'AReLiT': ('gin/experiments/small/arelit.gin', None),
}
FULL = {
    'XL:512': ('gin/experiments/paper/xl512.gin', 0.88),
    'XL:2048': ('gin/experiments/paper/xl2048.gin', 2.11),
    'Slide:12L': ('gin/experiments/paper/slide12.gin', None),
    'Slide:13L': ('gin/experiments/paper/slide13.gin', 1.00),
    'Rec:fixed:skip': ('gin/experiments/paper/rec_fixed_skip.gin', 0.99),
    'Rec:lstm:dual': ('gin/experiments/paper/rec_lstm_dual.gin', None),
    'Feedback:fixed:skip': ('gin/experiments/paper/feedback_fixed_skip.gin', None),
}


def make_runner(cfg: configs.ModelConfig, batch: int):
  """run(steps) runs real train steps (state donated, carry passed on); run.memory() is XLA's plan of the
  step's memory: (argument + output + temporary bytes, temporary bytes)."""
  from block_recurrent.model import factory  # pylint: disable=import-outside-toplevel
  model = factory.build(cfg, nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  train_cfg = configs.TrainConfig()
  tx, schedule = optim.optimizer(train_cfg), optim.schedule(train_cfg)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                              rng=jax.random.key_data(jax.random.key(1)), carry=model.init_carry(batch),
                              eval_carry=model.init_carry(1))
  state = jax.tree.map(lambda x: jnp.array(x, copy=True), state)  # donated: no two leaves may share a buffer
  fn = jax.jit(lambda st, b: step_lib.train_step(graphdef, tx, schedule, st, b, dropout=False), donate_argnums=0)
  tokens = np.random.default_rng(0).integers(4, cfg.vocab_size, (batch, cfg.segment_length + 1)).astype(np.int32)
  data = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'mask': np.ones_like(tokens[:, 1:], bool),
          'start': np.zeros(batch, bool), 'num_bytes': np.full(batch, cfg.segment_length, np.int32)}
  holder, compiled = [state], []

  def executable():  # compiled ahead of time, once: memory() can be asked before anything runs
    if not compiled:
      compiled.append(fn.lower(holder[0], data).compile())
    return compiled[0]

  def run(steps):
    for _ in range(steps):
      holder[0], metrics = executable()(holder[0], data)
    jax.block_until_ready(metrics)

  def memory():
    analysis = executable().memory_analysis()
    temp = analysis.temp_size_in_bytes
    return analysis.argument_size_in_bytes + analysis.output_size_in_bytes + temp, temp

  run.memory = memory
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=3, help='steps per model per round')
  parser.add_argument('--tokens', type=int, default=2048, help='tokens per step, the same for every model')
  parser.add_argument('--full', action='store_true', help="the paper's 150M models (a TPU/GPU host)")
  parser.add_argument('--models', nargs='+', default=None, help='a subset of the models, by name')
  parser.add_argument('--gin_param', action='append', default=[])
  args = parser.parse_args()
  table = FULL if args.full else SMALL
  names = args.models or list(table)
  if 'Slide:13L' not in names:
    names.append('Slide:13L')  # the reference of every ratio

  runners, tokens_per_step, flops_per_token, described = {}, {}, {}, {}
  for name in names:
    path = table[name][0]
    cfg = ginconf.model_config([path], ['configs.ModelConfig.dropout_rate = 0.0', *args.gin_param])
    if args.tokens % cfg.segment_length:
      raise SystemExit(f'--tokens {args.tokens} is not a multiple of {name}\'s segment length {cfg.segment_length}')
    batch = args.tokens // cfg.segment_length
    runners[name] = make_runner(cfg, batch)
    tokens_per_step[name] = batch * cfg.segment_length
    flops_per_token[name] = flops.train_flops_per_token(cfg)
    t0 = time.perf_counter()
    runners[name](1)  # compile
    first = time.perf_counter() - t0
    runners[name](1)  # warm up
    described[name] = (f'd={cfg.d_model} L={cfg.total_layers} N={cfg.segment_length} W={cfg.window} '
                       f'batch={batch} S={cfg.num_states if cfg.recurrent_layers else "-"} '
                       f'layer={cfg.sequence_layer}')
    print(f'{name:20s} {path}: {described[name]} (first step, compilation included: {first:.1f}s)', flush=True)

  times, peaks = {name: [] for name in names}, []
  for _ in range(args.rounds):
    peaks.append(peak_lib.measure_cpu(repeats=5))  # the MFU denominator, re-measured beside every round
    for name, run in runners.items():
      t0 = time.perf_counter()
      run(args.steps)
      times[name].append((time.perf_counter() - t0) / args.steps)

  ref = times['Slide:13L']
  rows, headers = [], ['model', 'config', 'tokens/s (min / median / max)', 'step ms (median)',
                       'MFU (min / median / max)', 'step time / Slide:13L (min / median / max)', 'paper']
  for name in names:
    ts = times[name]
    ratios = [t / r for t, r in zip(ts, ref)]
    mfu = [tokens_per_step[name] / t * flops_per_token[name] / p for t, p in zip(ts, peaks)]
    paper = table[name][1]
    rows.append({'model': name, 'gin_file': table[name][0], 'config': described[name],
                 'tokens_per_s': [tokens_per_step[name] / t for t in ts], 'step_s': ts, 'mfu': mfu,
                 'ratio_to_slide13': ratios, 'paper_ratio': paper})
  text = [f'Training speed, {args.rounds} rounds x {args.steps} steps of {args.tokens} tokens per model; '
          f'{common.machine()}',
          f'matmul peak (2048^2 f32) GFLOP/s: {common.spread([p / 1e9 for p in peaks], "{:.0f}")}', '',
          common.table(headers, [[r['model'], r['config'], common.spread(r['tokens_per_s'], '{:,.0f}'),
                                  f'{1000 * statistics.median(r["step_s"]):.0f}',
                                  common.spread([100 * m for m in r['mfu']], '{:.1f}%'),
                                  common.spread(r['ratio_to_slide13']),
                                  '' if r['paper_ratio'] is None else f'{r["paper_ratio"]:.2f}'] for r in rows])]
  rec = times.get('Rec:fixed:skip')
  xl4 = 'XL:2048' if args.full else 'XL:4W'
  if rec is not None and xl4 in times:
    for other, target in (('Slide:13L', 1.15), (xl4, 0.6)):
      ratios = [r / o for r, o in zip(rec, times[other])]
      verdict = 'met' if statistics.median(ratios) <= target else 'NOT met'
      text.append(f'\nstep time Rec:fixed:skip / {other}: {common.spread(ratios, "{:.3f}")} '
                  f'(target <= {target}: {verdict} at the median)')

  def draw(ax):
    medians = [statistics.median(r['ratio_to_slide13']) for r in rows]
    low = [m - min(r['ratio_to_slide13']) for m, r in zip(medians, rows)]
    high = [max(r['ratio_to_slide13']) - m for m, r in zip(medians, rows)]
    x = np.arange(len(rows))
    ax.bar(x, medians, yerr=[low, high], capsize=3, color='tab:blue', label='measured (median, min-max)')
    paper = [(i, r['paper_ratio']) for i, r in enumerate(rows) if r['paper_ratio'] is not None]
    ax.scatter([i for i, _ in paper], [p for _, p in paper], color='tab:red', zorder=3, label='paper')
    ax.axhline(1.0, color='gray', lw=0.8)
    ax.set_xticks(x, [r['model'] for r in rows], rotation=35, ha='right', fontsize=8)
    ax.set_ylabel('step time / Slide:13L')
    ax.set_title('Training step time at equal tokens per step', fontsize=9)
    ax.legend(fontsize=7)

  common.publish('train_throughput_full' if args.full else 'train_throughput', '\n'.join(text), rows, draw,
                 figsize=(7, 4))


if __name__ == '__main__':
  main()
