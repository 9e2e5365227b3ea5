"""The T-Maze memory diagnostic: success rate per corridor length for each policy core.

    python -m block_recurrent.rl.diagnostic [--cores mlp relit arelit gtrxl] [--lengths 4 8 16]
        [--updates 300] [--out results/tmaze]

Each (core, length) trains A2C from scratch with the same seed and budget; success = episodes ending
with the correct turn, over those ending in the last quarter of training (a memoryless policy is at
chance, 50%, once it has learnt to walk to the junction). Prints a markdown table and writes
OUT.png (with matplotlib, the `bench` extra) and OUT.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np

from block_recurrent.rl import a2c, tmaze


def run(core: str, length: int, updates: int, base: a2c.A2CConfig) -> dict:
  cfg = dataclasses.replace(base, core=core)
  init, update, _, _ = a2c.make_trainer(cfg, tmaze.TMaze(length=length, max_steps=4 * length + 20))
  params, opt_state, runner = init()
  correct = wrong = timeouts = 0
  t0 = time.perf_counter()
  for i in range(updates):
    params, opt_state, runner, stats = update(params, opt_state, runner)
    if i >= updates * 3 // 4:
      correct += int(stats['correct'])
      wrong += int(stats['wrong'])
      timeouts += int(stats['timeouts'])
  episodes = correct + wrong + timeouts
  return {'core': core, 'length': length, 'success': correct / max(episodes, 1), 'episodes': episodes,
          'env_steps': updates * cfg.num_envs * cfg.rollout, 'seconds': time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cores', nargs='+', default=['mlp', 'relit', 'arelit', 'gtrxl'])
  parser.add_argument('--lengths', type=int, nargs='+', default=[4, 8, 16])
  parser.add_argument('--updates', type=int, default=300, help='A2C updates per run (8 envs x 64 steps each)')
  parser.add_argument('--memory', type=int, default=32, help="GTrXL's memory M")
  parser.add_argument('--out', default='results/tmaze')
  args = parser.parse_args(argv)
  base = a2c.A2CConfig(memory=args.memory)
  rows = [run(core, length, args.updates, base) for core in args.cores for length in args.lengths]
  print(f'\nT-Maze success rate (last quarter of {args.updates} updates, {rows[0]["env_steps"]:,} env steps per run)')
  print('| core | ' + ' | '.join(f'L={n}' for n in args.lengths) + ' |')
  print('|---|' + '---|' * len(args.lengths))
  for core in args.cores:
    cells = [r for r in rows if r['core'] == core]
    print(f'| {core} | ' + ' | '.join(f'{100 * r["success"]:.0f}% ({r["episodes"]} ep, {r["seconds"]:.0f}s)'
                                       for r in cells) + ' |')
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix('.json').write_text(json.dumps(rows, indent=1))
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print(f'wrote {out.with_suffix(".json")}; no plot: pip install -e ".[bench]" for matplotlib')
    return 0
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for core in args.cores:
    cells = [r for r in rows if r['core'] == core]
    ax.plot([r['length'] for r in cells], [100 * r['success'] for r in cells], marker='o', label=core)
  ax.axhline(50, color='gray', linestyle=':', label='chance')
  ax.set_xlabel('corridor length')
  ax.set_ylabel('success rate (%)')
  ax.set_title('T-Maze memory diagnostic')
  ax.legend()
  fig.tight_layout()
  fig.savefig(out.with_suffix('.png'), dpi=120)
  print(f'wrote {out.with_suffix(".png")} and {out.with_suffix(".json")}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
