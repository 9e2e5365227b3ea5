"""Compiles paper experiments for TPU slices with XLA's real TPU compiler (brt-compile's code, libtpu from
the `tpu` extra, no TPU needed) and tabulates per-device peak memory, whether it fits, compile time and
FLOPs per step: results/tpu_table.{md,json}, whose table docs/tpu.md carries.

    .venv/bin/python benchmarks/tpu_table.py                        # every row (hours on a 2-core CPU)
    .venv/bin/python benchmarks/tpu_table.py --experiments rec_fixed_skip slide13 --topologies v4-32
    .venv/bin/python benchmarks/tpu_table.py --largest_batch --shipped_from docs/tpu.md --generate --pairs xl512:v5p-8

Rows: every experiment in gin/experiments/paper/ at 150M, Rec:fixed:skip at 300M, 600M and 1.3B
(gin/experiments/paper_sizes/), on each topology, as shipped; with --largest_batch, also the largest global
batch that fits (`largest_batch`: the shipped batch's memory predicts it, compiles on either side prove it). Generate rows: the per-token step of the 150M
and 1.3B Rec:fixed:skip on one v5e chip. Each compile runs in its own process (XLA's memory is returned).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import pathlib
import re
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


def _bind(experiment: str, batch: int = 0):
  """The experiment's (model, data, train, mesh) configs as brt-compile binds them; batch: rows, 0 as shipped."""
  import os
  os.chdir(ROOT)
  from block_recurrent import configs, ginconf
  ginconf.parse([_gin(experiment), TASK], [f'configs.DataConfig.batch_size = {batch}'] if batch else [])
  return (ginconf.bound_model_config(), ginconf.bound_data_config(), ginconf.bound(configs.TrainConfig),
          ginconf.bound(configs.MeshConfig))


def _compile(queue, experiment, topology, step, batch):
  from block_recurrent.train import aot
  from block_recurrent import configs
  try:
    model_cfg, data_cfg, train_cfg, mesh_cfg = _bind(experiment, batch)
    r = aot.compile_step(model_cfg, data_cfg, train_cfg, mesh_cfg, topology, step)
    queue.put(dict(ok=True, rows=r.rows, peak_gib=r.peak / aot.GIB, hbm_gib=r.hbm_gib, fits=r.fits,
                   compile_s=r.compile_seconds, xla_flops=r.xla_flops, arguments_gib=r.arguments / aot.GIB,
                   outputs_gib=(r.outputs - r.aliased) / aot.GIB, temporaries_gib=r.temporaries / aot.GIB, analytic_flops=r.analytic_flops,
                   mesh=r.mesh, dtype=model_cfg.dtype, remat=model_cfg.remat))
  except configs.ConfigError as e:
    queue.put(dict(ok=False, rows=batch, error=str(e), fits=False))


def compile_in_process(experiment, topology, step='train', batch=0) -> dict:
  return dict(experiment=experiment, topology=topology, step=step,
              **_in_process(_compile, experiment, topology, step, batch))


def _fixed(queue, experiment, num_devices):
  from block_recurrent.train import aot, memory_plan
  model_cfg, data_cfg, train_cfg, mesh_cfg = _bind(experiment)
  plan = memory_plan.plan(model_cfg, train_cfg, data_cfg.batch_size, mesh_cfg, num_devices)
  queue.put((plan.params + plan.opt_state) / aot.GIB)


def _in_process(target, *args):
  ctx = mp.get_context('spawn')
  queue = ctx.Queue()
  proc = ctx.Process(target=target, args=(queue,) + args)
  proc.start()
  result = queue.get()
  proc.join()
  return result


def shipped_from(table: pathlib.Path, experiment: str, topology: str) -> dict | None:
  """The shipped batch's train row for (experiment, topology) from a table this script wrote before
  (docs/tpu.md), as the start of a largest-batch search in place of compiling it again. Its peak is split
  into what does not grow with the rows (parameters and optimiser state, from memory_plan: no compile)
  and the rest (XLA's temporaries and the carries)."""
  for line in table.read_text().splitlines():
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) != 8 or cells[2] != 'train' or cells[1] != topology or cells[5] != 'yes':
      continue
    if cells[0] not in (experiment, f'{experiment} (150M)'):
      continue
    peak, hbm = re.match(r'([0-9.]+) of ([0-9.]+) GiB', cells[4]).groups()
    mesh = dict(zip(('data', 'fsdp', 'model'), map(int, re.search(r'mesh (\d+)x(\d+)x(\d+)', cells[7]).groups())))
    flops, ratio = map(float, re.match(r'([0-9.e+]+) \(([0-9.]+)x analytic\)', cells[7]).groups())
    fixed = _in_process(_fixed, experiment, math.prod(mesh.values()))
    return dict(experiment=experiment, topology=topology, step='train', ok=True, fits=True, rows=int(cells[3]),
                peak_gib=float(peak), hbm_gib=float(hbm), arguments_gib=fixed, outputs_gib=0.0,
                temporaries_gib=float(peak) - fixed, mesh=mesh,
                compile_s=float(re.match(r'[0-9.]+', cells[6]).group()), xla_flops=flops, analytic_flops=flops / ratio,
                shipped_from=str(table))
  return None


def largest_batch(experiment: str, topology: str, first: dict, record) -> int:
  """The largest global batch that fits, proved by two compiles: it fits, one step more does not.

  The batch is split over the mesh's batch axes (data x fsdp), so it grows in steps of their product.
  Per-device peak is close to affine in rows per device: the parameters and optimiser state stay, XLA's
  temporaries grow with the rows. The shipped batch's compile gives both, so it predicts the boundary. Near
  the boundary XLA starts recomputing activations to stay within the memory, so the prediction is often a
  floor: from it the search gallops (1, 2, 4, ... steps) until one batch fits and a larger one does not, then
  halves that interval down to one step. Every compile is recorded (largest_batch_probe)."""
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
  jump = step
  if fits(guess):
    lo = guess
    while fits(lo + jump):
      lo, jump = lo + jump, 2 * jump
    hi = lo + jump
  else:
    hi = guess
    while True:
      lower = max(hi - jump, step)
      if lower == hi:  # not even one row per device fits
        record(dict(probes[hi], largest_batch=0))
        return 0
      if fits(lower):
        lo = lower
        break
      hi, jump = lower, 2 * jump
  while hi - lo > step:  # lo fits, hi does not
    mid = lo + (hi - lo) // (2 * step) * step
    if fits(mid):
      lo = mid
    else:
      hi = mid
  guess = lo
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
  parser.add_argument('--shipped_from', default=None, metavar='TABLE',
                      help='with --largest_batch: take the shipped batch\'s row from this table (docs/tpu.md) '
                      'instead of compiling it again')
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
    known = args.largest_batch and args.shipped_from and shipped_from(pathlib.Path(args.shipped_from), experiment,
                                                                        topology)
    r = known or compile_in_process(experiment, topology)
    if not known:
      record(r)
    if args.largest_batch and r['ok'] and r['fits']:
      largest_batch(experiment, topology, r, record)
  for experiment in args.generate:
    record(compile_in_process(experiment, 'v5e-1', 'generate'))
  print(f'wrote {out}.md and {out}.json')


if __name__ == '__main__':
  main()
