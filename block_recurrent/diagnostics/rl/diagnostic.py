"""The T-Maze memory diagnostic: success rate per corridor length for each policy core.

    python -m block_recurrent.diagnostics.rl.diagnostic [--cores mlp relit arelit gtrxl brt] [--lengths 4 8 16]
        [--updates 300] [--curriculum 8 16 32 --curriculum_updates 300] [--envs 8 --rollout 64]
        [--memory 32] [--out results/tmaze]

Each (core, length) trains A2C from scratch with the same seed and budget; success = episodes ending
with the correct turn, over those ending in the last quarter of training at that length (a memoryless
policy is at chance, 50%, once it has learnt to walk to the junction; an episode is cut at 1000 steps).
At long corridors a random walk never reaches the junction, so nothing is learnt; --curriculum first
trains through shorter corridors (walking right and carrying the cue), then at the length measured.
Prints a markdown table and writes OUT.png (with matplotlib, the `bench` extra) and OUT.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from block_recurrent.diagnostics import plots
from block_recurrent.diagnostics.rl import a2c, tmaze


def run(core: str, length: int, updates: int, base: a2c.A2CConfig, curriculum: tuple[int, ...] = (),
        curriculum_updates: int = 0) -> dict:
  """Trains one core at one corridor length; with a curriculum, first through each shorter length listed
  (curriculum_updates each, parameters and optimiser state carried on), then `updates` at `length`."""
  cfg = dataclasses.replace(base, core=core)
  phases = [(n, curriculum_updates) for n in curriculum if n < length] + [(length, updates)]
  params = opt_state = None
  correct = wrong = timeouts = 0
  t0 = time.perf_counter()
  for n, count in phases:
    init, update, _, _ = a2c.make_trainer(cfg, tmaze.TMaze(length=n, max_steps=1000))
    fresh_params, fresh_opt, runner = init()
    if params is None:
      params, opt_state = fresh_params, fresh_opt
    for i in range(count):
      params, opt_state, runner, stats = update(params, opt_state, runner)
      if n == length and i >= count * 3 // 4:
        correct += int(stats['correct'])
        wrong += int(stats['wrong'])
        timeouts += int(stats['timeouts'])
  episodes = correct + wrong + timeouts
  steps = sum(count for _, count in phases) * cfg.num_envs * cfg.rollout
  return {'core': core, 'length': length, 'success': correct / max(episodes, 1), 'episodes': episodes,
          'timeouts': timeouts, 'env_steps': steps, 'curriculum': [n for n, _ in phases[:-1]],
          'seconds': time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cores', nargs='+', default=['mlp', 'relit', 'arelit', 'gtrxl', 'brt'],
                      choices=a2c.CORES)
  parser.add_argument('--lengths', type=int, nargs='+', default=[4, 8, 16])
  parser.add_argument('--updates', type=int, default=300, help='A2C updates at each final length')
  parser.add_argument('--curriculum', type=int, nargs='*', default=[],
                      help='shorter corridors to train through first (those below each final length)')
  parser.add_argument('--curriculum_updates', type=int, default=300, help='A2C updates per curriculum length')
  parser.add_argument('--envs', type=int, default=8)
  parser.add_argument('--rollout', type=int, default=64, help='steps per environment per update')
  parser.add_argument('--memory', type=int, default=32, help="GTrXL's memory M")
  parser.add_argument('--learning_rate', type=float, default=1e-3)
  parser.add_argument('--gate_bias', type=float, default=None,
                      help='ReLiT/AReLiT: learned gate biases starting at this value (default: none, as the paper)')
  parser.add_argument('--out', default='results/tmaze')
  args = parser.parse_args(argv)
  for name in ('updates', 'envs', 'rollout', 'memory'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be positive, got {getattr(args, name)}')
  if min(args.lengths + args.curriculum) < 2:
    parser.error('corridor lengths must be at least 2')
  base = a2c.A2CConfig(memory=args.memory, num_envs=args.envs, rollout=args.rollout,
                       learning_rate=args.learning_rate, gate_bias=args.gate_bias)
  rows = []
  for core in args.cores:
    for length in args.lengths:
      rows.append(run(core, length, args.updates, base, tuple(args.curriculum), args.curriculum_updates))
      r = rows[-1]
      print(f'{core} L={length}: {100 * r["success"]:.0f}% of {r["episodes"]} episodes ({r["timeouts"]} timed out), '
            f'{r["env_steps"]:,} env steps, {r["seconds"]:.0f}s', flush=True)
  budget = (f'{args.envs} envs x {args.rollout} steps per update, {args.updates} updates at each length'
            + (f' after {args.curriculum_updates} at each of {args.curriculum} below it' if args.curriculum else '')
            + (f'; ReLiT/AReLiT gate biases from {args.gate_bias}' if args.gate_bias is not None else ''))
  print(f'\nT-Maze success rate over the last quarter of training ({budget})')
  print('| core | ' + ' | '.join(f'L={n}' for n in args.lengths) + ' |')
  print('|---|' + '---|' * len(args.lengths))
  for core in args.cores:
    cells = [r for r in rows if r['core'] == core]
    print(f'| {core} | ' + ' | '.join(f'{100 * r["success"]:.0f}% ({r["episodes"]} ep, {r["seconds"]:.0f}s)'
                                       for r in cells) + ' |')
  def draw(ax):
    for core in args.cores:
      cells = [r for r in rows if r['core'] == core]
      ax.plot([r['length'] for r in cells], [100 * r['success'] for r in cells], marker='o', label=core)
    ax.axhline(50, color='gray', linestyle=':', label='chance')
    ax.set_xlabel('corridor length')
    ax.set_ylabel('success rate (%)')
    ax.set_title('T-Maze memory diagnostic')
    ax.legend()

  plots.save(args.out, rows, draw)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
