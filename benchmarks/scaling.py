"""Time and memory per token as the training segment grows, for the recurrent model (linear in the
segment: flat per token) against a vanilla full-attention transformer (quadratic), side by side.

    .venv/bin/python benchmarks/scaling.py [--segments 512 1024 ... 32768 --rounds 3] [--full]

Both models are the small size (6 layers, d=256, 8 heads of 32, MLP 1024, byte vocabulary), batch 1, one
real train step (loss, backward, Adafactor) per measurement. The recurrent model is Rec:fixed:skip with
window W=128 and 128 states; the vanilla transformer attends causally over the whole segment (W = N, no
cache). Memory is XLA's plan for the compiled step (arguments + outputs + temporaries; per token: the
temporaries, i.e. activations), read before it runs: a step whose plan exceeds `--memory_gib` (default: 3/4 of this machine's RAM) is reported as out of
memory instead of being run, and the vanilla model is not tried at longer segments. Each round times
every (segment, model) once, so the machine's load hits all alike. `--full` uses the 150M paper models
(W=512, 512 states; a TPU/GPU host). Target: the recurrent model's time per token at 32k within 1.2x of
that at 1k.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import common  # first: puts the checkout on sys.path
from train_throughput import make_runner

from block_recurrent import ginconf

MODELS = {  # name: (gin file, bindings that make the segment N)
    'Rec:fixed:skip': ('gin/experiments/small/rec_fixed_skip.gin', lambda n: [f'configs.ModelConfig.segment_length = {n}']),
    'vanilla (full attention)': ('gin/experiments/small/slide.gin', lambda n: [
        f'configs.ModelConfig.segment_length = {n}', f'configs.ModelConfig.window = {n}',
        'configs.ModelConfig.use_xl_cache = False']),
}
FULL = {'Rec:fixed:skip': 'gin/experiments/paper/rec_fixed_skip.gin', 'vanilla (full attention)': 'gin/experiments/paper/slide12.gin'}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--segments', type=int, nargs='+', default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--memory_gib', type=float,
                      default=0.75 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30)
  parser.add_argument('--full', action='store_true', help="the paper's 150M models (a TPU/GPU host)")
  args = parser.parse_args()
  models = {name: (FULL[name] if args.full else path, bind) for name, (path, bind) in MODELS.items()}

  runners, plans, out_of_memory = {}, {}, set()
  for n in args.segments:
    for name, (path, bind) in models.items():
      if name in out_of_memory:
        continue
      cfg = ginconf.model_config([path], ['configs.ModelConfig.dropout_rate = 0.0', *bind(n)])
      run = make_runner(cfg, 1)
      t0 = time.perf_counter()
      total, temp = run.memory()  # compiles; nothing runs yet
      plans[name, n] = (total, temp)
      if total > args.memory_gib * 2 ** 30:
        out_of_memory.add(name)
        print(f'{name} at N={n:,}: XLA plans {total / 2 ** 30:.1f} GiB > {args.memory_gib:.1f} GiB: out of memory, '
              'not run (nor at longer segments)', flush=True)
        continue
      run(1)  # warm up
      runners[name, n] = run
      print(f'{name} at N={n:,}: compiled and warmed in {time.perf_counter() - t0:.1f}s, plan '
            f'{total / 2 ** 20:,.0f} MiB', flush=True)

  times = {key: [] for key in runners}
  for _ in range(args.rounds):
    for key, run in runners.items():
      t0 = time.perf_counter()
      run(1)
      times[key].append(time.perf_counter() - t0)

  rows = []
  for (name, n), (total, temp) in plans.items():
    ts = times.get((name, n))
    rows.append({'model': name, 'segment': n, 'memory_bytes': total, 'temp_bytes': temp,
                 'us_per_token': None if ts is None else [1e6 * t / n for t in ts]})
  base = {name: next((r for r in rows if r['model'] == name and r['segment'] >= 1024 and r['us_per_token']), None)
          for name in models}
  cells = []
  for r in rows:
    ref = base[r['model']]
    per_token = r['us_per_token']
    cells.append([r['model'], f'{r["segment"]:,}',
                  'out of memory' if per_token is None else common.spread(per_token, '{:.0f}'),
                  '' if per_token is None or ref is None else
                  f'{statistics.median(per_token) / statistics.median(ref["us_per_token"]):.2f}',
                  f'{r["memory_bytes"] / 2 ** 20:,.0f}', f'{r["temp_bytes"] / r["segment"] / 1024:.0f}'])
  text = [f'Scaling with the segment length: one train step, batch 1, {args.rounds} rounds; {common.machine()}', '',
          common.table(['model', 'segment N', 'µs per token (min / median / max)', 'per token vs N=1k',
                        'XLA memory plan (MiB)', 'temporaries per token (KiB)'], cells)]
  rec = [r for r in rows if r['model'] == 'Rec:fixed:skip' and r['us_per_token']]
  if base['Rec:fixed:skip'] is not None and rec:
    ratio = statistics.median(rec[-1]['us_per_token']) / statistics.median(base['Rec:fixed:skip']['us_per_token'])
    text.append(f'\nRec:fixed:skip time per token at N={rec[-1]["segment"]:,} / N={base["Rec:fixed:skip"]["segment"]:,}: '
                f'{ratio:.2f} (target <= 1.2: {"met" if ratio <= 1.2 else "NOT met"})')

  def draw(ax):
    twin = ax.twinx()
    for (name, color) in zip(models, ('tab:blue', 'tab:orange')):
      mine = [r for r in rows if r['model'] == name]
      timed = [r for r in mine if r['us_per_token']]
      ax.plot([r['segment'] for r in timed], [statistics.median(r['us_per_token']) for r in timed], 'o-',
              color=color, label=f'{name}: time')
      twin.plot([r['segment'] for r in mine], [r['temp_bytes'] / r['segment'] / 1024 for r in mine], 's--',
                color=color, alpha=0.6, label=f'{name}: memory')
      for r in mine:
        if not r['us_per_token']:
          twin.annotate('OOM', (r['segment'], r['temp_bytes'] / r['segment'] / 1024), fontsize=7, color=color)
    ax.set_xscale('log', base=2)
    if any(r['us_per_token'] for r in rows):
      ax.set_yscale('log')
    twin.set_yscale('log')
    ax.set_xlabel('segment length N (tokens)')
    ax.set_ylabel('µs per token (solid)')
    twin.set_ylabel('XLA temporaries, KiB per token (dashed)')
    ax.legend(fontsize=7, loc='upper left')
    ax.set_title('Train step cost per token against segment length', fontsize=9)

  common.publish('scaling_full' if args.full else 'scaling', '\n'.join(text), rows, draw, figsize=(7, 4))


if __name__ == '__main__':
  main()
