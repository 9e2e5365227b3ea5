"""Compiles paper experiments for TPU slices with XLA's real TPU compiler (brt-compile's code, libtpu from
the `tpu` extra, no TPU needed) and tabulates per-device peak memory, whether it fits, compile time and
FLOPs per step: results/tpu_table.{md,json}, whose table docs/tpu.md carries.

    .venv/bin/python benchmarks/tpu_table.py                        # every row (hours on a 2-core CPU)
    .venv/bin/python benchmarks/tpu_table.py --experiments rec_fixed_skip slide13 --topologies v4-32

Rows: every experiment in gin/experiments/paper/ at 150M, Rec:fixed:skip at 300M, 600M and 1.3B
(gin/experiments/paper_sizes/), on each topology, as shipped; with --largest_batch, also the largest global
batch that fits (`largest_batch`: the shipped batch's memory predicts it, compiles on either side prove it). Generate rows: the per-token step of the 150M
and 1.3B Rec:fixed:skip on one v5e chip. Each compile runs in its own process (XLA's memory is returned).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

PAPER = sorted(p.stem for p in (ROOT / 'gin/experiments/paper').glob('*.gin'))
SIZES = ['rec_fixed_skip_300M', 'rec_fixed_skip_600M', 'rec_fixed_skip_1.3B']
TOPOLOGIES = ['v4-32', 'v5e-16', 'v5p-8']
TASK = 'gin/task/pg19_tokens.gin'


def _gin(experiment: str) -> str:
  folder = 'paper' if experiment in PAPER else 'paper_sizes'
  return f'gin/experiments/{folder}/{experiment}.gin'


def _compile(queue, experiment, topology, step, batch):
  import os
  os.chdir(ROOT)
  from block_recurrent.train import aot
  from block_recurrent import configs, ginconf
  params = [f'configs.DataConfig.batch_size = {batch}'] if batch else []
  try:
    ginconf.parse([_gin(experiment), TASK], params)
    model_cfg, data_cfg = ginconf.bound_model_config(), ginconf.bound_data_config()
    r = aot.compile_step(model_cfg, data_cfg, ginconf.bound(configs.TrainConfig), ginconf.bound(configs.MeshConfig),
                         topology, step)
    queue.put(dict(ok=True, rows=r.rows, peak_gib=r.peak / aot.GIB, hbm_gib=r.hbm_gib, fits=r.fits,
                   compile_s=r.compile_seconds, xla_flops=r.xla_flops, arguments_gib=r.arguments / aot.GIB,
                   outputs_gib=(r.outputs - r.aliased) / aot.GIB, temporaries_gib=r.temporaries / aot.GIB, analytic_flops=r.analytic_flops,
                   mesh=r.mesh, dtype=model_cfg.dtype, remat=model_cfg.remat))
  except configs.ConfigError as e:
    queue.put(dict(ok=False, rows=batch, error=str(e), fits=False))


def compile_in_process(experiment, topology, step='train', batch=0) -> dict:
  ctx = mp.get_context('spawn')
  queue = ctx.Queue()
  proc = ctx.Process(target=_compile, args=(queue, experiment, topology, step, batch))
  proc.start()
  result = queue.get()
  proc.join()
  return dict(experiment=experiment, topology=topology, step=step, **result)


def largest_batch(experiment: str, topology: str, first: dict, record) -> int:
  """The largest global batch that fits, proved by two compiles: it fits, one step more does not.

  The batch is split over the mesh's batch axes (data x fsdp), so it grows in steps of their product.
  Per-device peak is close to affine in rows per device: the arguments and unaliased outputs stay, XLA's
  temporaries grow with the rows. The shipped batch's compile gives both, so it predicts the boundary; the
  predicted batch and the next step up are compiled, and the search walks a step at a time from there until
  the boundary is seen. Every compile is recorded (largest_batch_probe)."""
  step = first['mesh'].get('data', 1) * first['mesh'].get('fsdp', 1)
  probes = {first['rows']: first}

  def probe(batch: int) -> dict:
    if batch not in probes:
      r = compile_in_process(experiment, topology, batch=batch)
      probes[batch] = r
      record(dict(r, largest_batch_probe=True))
    return probes[batch]

  def fits(batch: int) -> bool:
    return probe(batch)['ok'] and probe(batch)['fits']

  fixed = first['arguments_gib'] + first['outputs_gib']
  per_step = max(first['temporaries_gib'] / (first['rows'] / step), 1e-6)  # GiB per `step` more rows
  guess = max(step, step * int((first['hbm_gib'] - fixed) // per_step))
  if fits(guess):
    while fits(guess + step):
      guess += step
  else:
    while guess > step and not fits(guess - step):
      guess -= step
    guess -= step
  record(dict(probes[guess], largest_batch=guess))
  return guess


def _row(r: dict) -> str:
  if not r['ok']:
    return f"| {r['experiment']} | {r['topology']} | {r['step']} | {r['rows']} | - | no: {r['error'][:90]} | - | - |"
  mesh = 'x'.join(str(v) for v in r['mesh'].values())
  name = f"{r['experiment']} (largest batch)" if 'largest_batch' in r else r['experiment']
  return (f"| {name} | {r['topology']} | {r['step']} | {r['rows']} | {r['peak_gib']:.2f} of "
          f"{r['hbm_gib']:g} GiB | {'yes' if r['fits'] else 'no'} | {r['compile_s']:.0f} s | "
          f"{r['xla_flops']:.3g} ({r['xla_flops'] / r['analytic_flops']:.2f}x analytic), mesh {mesh} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--experiments', nargs='+', default=PAPER + SIZES)
  parser.add_argument('--topologies', nargs='+', default=TOPOLOGIES)
  parser.add_argument('--generate', nargs='*', default=['rec_fixed_skip', 'rec_fixed_skip_1.3B'],
                      help='experiments whose per-token generate step is compiled for one v5e chip')
  parser.add_argument('--pairs', nargs='+', default=None,
                      help='EXPERIMENT:SLICE rows to compile instead of --experiments x --topologies')
  parser.add_argument('--largest_batch', action='store_true', help='also search the largest batch that fits')
  parser.add_argument('--out', default=str(ROOT / 'results' / 'tpu_table'))
  args = parser.parse_args()
  import common  # pylint: disable=import-outside-toplevel
  rows = []
  header = ['| experiment | slice | step | rows | peak per device | fits | compile | XLA FLOPs per step |',
            '|---|---|---|---|---|---|---|---|']
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)

  def record(r):  # the files are rewritten after every row: an interrupted run keeps what it compiled
    rows.append(r)
    print(_row(r), flush=True)
    table = '\n'.join(header + [_row(x) for x in rows])
    out.with_suffix('.md').write_text(f'{common.machine()}\n\n{table}\n')
    out.with_suffix('.json').write_text(json.dumps(rows, indent=1))

  pairs = ([tuple(p.split(':')) for p in args.pairs] if args.pairs
           else [(e, t) for e in args.experiments for t in args.topologies])
  for experiment, topology in pairs:
    r = compile_in_process(experiment, topology)
    record(r)
    if args.largest_batch and r['ok'] and r['fits']:
      largest_batch(experiment, topology, r, record)
  for experiment in args.generate:
    record(compile_in_process(experiment, 'v5e-1', 'generate'))
  print(f'wrote {out}.md and {out}.json')


if __name__ == '__main__':
  main()
