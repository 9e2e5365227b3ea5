"""Soak test of crash safety: a tiny brt-train run killed with SIGKILL at 50 seeded random moments (and,
with --terms N, preempted with SIGTERM at N more), resumed after each, then compared with a run never
interrupted.

    .venv/bin/python benchmarks/soak.py [--kills 50 --terms 0 --steps 120 --seed 0]

After every interruption each checkpoint Orbax lists must restore completely; at the end the final
parameters, optimiser state, RNG, carries and data cursor must equal the uninterrupted run's bitwise.
Prints a summary table and writes results/soak.{md,json}. One CPU device, a shared compilation cache.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import signal
import tempfile
import time

import common  # first: puts the checkout on sys.path
import numpy as np

from block_recurrent.train import faults


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=50)
  parser.add_argument('--terms', type=int, default=0, help='SIGTERMs mixed in (the test has 5)')
  parser.add_argument('--steps', type=int, default=120)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  import jax  # pylint: disable=import-outside-toplevel

  root = pathlib.Path(tempfile.mkdtemp(prefix='soak_'))
  env = faults.environment(str(root / 'jax_cache'))
  env['XLA_FLAGS'] = ''  # one CPU device

  def brt_args(workdir):
    params = [f'configs.TrainConfig.num_steps = {args.steps}', 'configs.TrainConfig.checkpoint_every = 2',
              'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_every = 10',
              'configs.TrainConfig.eval_segments = 2', 'configs.TrainConfig.warmup_steps = 2',
              'configs.DataConfig.batch_size = 2', 'configs.TrainConfig.keep_checkpoints = 2']
    return (['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/task/pg_mini_bytes.gin']
            + [f'--gin_param={p}' for p in params] + [f'--workdir={workdir}'])

  t0 = time.perf_counter()
  reference = faults.run_to_end(brt_args(root / 'reference'), env)
  assert reference.returncode == 0, reference.stderr[-2000:]
  kinds = [signal.SIGKILL] * args.kills + [signal.SIGTERM] * args.terms
  rng = np.random.default_rng(args.seed)
  rng.shuffle(kinds)
  plan = faults.schedule(args.seed, kinds, args.steps, max_delay_s=0.25)
  workdir = root / 'interrupted'
  done, final = faults.run_with_interruptions(brt_args(workdir), workdir, plan, env,
                                              echo=lambda line: print(line, flush=True))
  assert final.returncode == 0, final.stderr[-2000:]
  a, b = faults.saved_state(root / 'reference', args.steps), faults.saved_state(workdir, args.steps)
  equal = a['data'] == b['data'] and all(
      np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a['state']), jax.tree.leaves(b['state'])))
  outcomes = collections.Counter((d.signal, d.returncode) for d in done)
  leftovers = [p.name for p in (workdir / 'checkpoints').iterdir() if 'tmp' in p.name]
  rows = [[f'{sig} -> exit {code}', n] for (sig, code), n in sorted(outcomes.items())]
  lost = [d for d in done if d.signal == 'SIGTERM' and d.stopped_line and d.checkpoints[-1] < d.last_logged]
  text = '\n'.join([
      f'Soak: {len(done)} interruptions of a {args.steps}-step tiny run (seed {args.seed}), '
      f'{time.perf_counter() - t0:.0f} s; {common.machine()}', '',
      common.table(['interruption -> outcome', 'count'], rows), '',
      f'every listed checkpoint restored after every interruption: yes ({sum(len(d.checkpoints) for d in done)} restores)',
      f'SIGTERM runs that lost a logged step: {len(lost)}',
      f'incomplete checkpoint folders left at the end: {len(leftovers)}',
      f'final state equal to the uninterrupted run (bitwise, {len(jax.tree.leaves(a["state"]))} arrays + cursor): '
      f'{"yes" if equal else "NO"}'])
  common.RESULTS.mkdir(exist_ok=True)
  (common.RESULTS / 'soak.md').write_text(text + '\n')
  common.plots.save(str(common.RESULTS / 'soak'), [d.__dict__ for d in done], lambda ax: ax.hist(
      [d.after_step for d in done], bins=20), figsize=(5, 3))
  print(text)


if __name__ == '__main__':
  main()
