"""Where does recurrence pay off? Rec:fixed:skip against a sliding window (Slide) at the same width, window and
tokens per step, with Transformer-XL at the window W and at 4W as reference points, on PG-mini and on a
code corpus in the GitHub layout, across training length, window, state count, optimiser and seed.

    .venv/bin/python benchmarks/recurrence_payoff.py                 # the default grid (under 4 h on 2 cores)
    .venv/bin/python benchmarks/recurrence_payoff.py --long          # adds the longer points
    .venv/bin/python benchmarks/recurrence_payoff.py --only base_rec base_slide   # some points
    .venv/bin/python benchmarks/recurrence_payoff.py --list          # the points and whether they are done
    .venv/bin/python benchmarks/recurrence_payoff.py --report        # rewrite the table and plot from what is done

Every point is brt-train then brt-eval, through their entry points, in WORKDIR/<point> (default
workdirs/payoff). A rerun resumes: a finished point (its result.json) is reused, an interrupted one
resumes from its newest checkpoint. Each point is scored on the same first --eval_tokens tokens of the
validation split (one lane): bits per byte overall and by position in the document (brt-eval
--by_position), and again with the recurrent state ablated (--ablate_state=reset_each_segment: what the
state carries across segments; reset_each_block: everything it carries). The results accumulate in
results/recurrence_payoff.{jsonl,md,png}.

The base recipe is the default experiment's (gin/experiments/local_cpu.gin's model and recipe: d = 128,
4 layers, N = 256, W = 64, S = 64, 8 rows, AdamW 3e-3 cosine, 1500 steps), through gin/experiments/compare/.
The code corpus (--code_dir, default WORKDIR/code) is built from the Python packages installed beside this
interpreter: one top-level package = one repository, its .py files (at most 512 KiB per package).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'benchmarks'))

MODELS = {'rec': 'gin/experiments/compare/rec_fixed_skip.gin', 'slide': 'gin/experiments/compare/slide.gin',
          'xl': 'gin/experiments/compare/xl.gin', 'xl4x': 'gin/experiments/compare/xl_4x.gin'}
LABELS = {'rec': 'Rec:fixed:skip', 'slide': 'Slide', 'xl': 'XL:W', 'xl4x': 'XL:4W'}
TOKENS_PER_STEP = 2048
BASE_STEPS = 1500  # the default experiment's (gin/train/cpu_short.gin)


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  model: str  # MODELS
  corpus: str = 'pg_mini'  # or 'code'
  window: int = 64
  states: int = 64
  optimizer: str = 'adamw'  # or 'adafactor' (the paper's: rsqrt schedule, parameter-scaled updates)
  steps: int = BASE_STEPS
  seed: int = 0
  gate_bias: float | None = None  # ModelConfig.state_gate_bias (None: the paper's init)
  rec_layer: int | None = None  # ModelConfig.recurrent_layers (None: the paper's -3, the 2nd of our 4 layers)

  @property
  def segment(self) -> int:
    return self.window * (4 if self.model == 'xl4x' else 1) if self.model.startswith('xl') else 4 * self.window

  def gin_params(self, code_dir: str) -> list[str]:
    n = self.segment
    p = [f'configs.ModelConfig.window = {n if self.model.startswith("xl") else self.window}',
         f'configs.ModelConfig.segment_length = {n}', f'configs.DataConfig.batch_size = {TOKENS_PER_STEP // n}',
         f'configs.TrainConfig.num_steps = {self.steps}', f'configs.TrainConfig.seed = {self.seed}',
         f'configs.TrainConfig.eval_every = {max(self.steps // 4, 1)}', 'configs.TrainConfig.eval_segments = 16',
         f'configs.TrainConfig.checkpoint_every = {max(self.steps // 4, 1)}']
    if self.model == 'rec':
      p.append(f'configs.ModelConfig.num_states = {self.states}')
    if self.model == 'rec' and self.rec_layer is not None:
      p.append(f'configs.ModelConfig.recurrent_layers = ({self.rec_layer},)')
    if self.gate_bias is not None:
      p.append(f'configs.ModelConfig.state_gate_bias = {self.gate_bias}')
    if self.optimizer == 'adafactor':  # the paper's optimiser and schedule, warmup scaled to the run
      p += ["configs.TrainConfig.optimizer = 'adafactor'", 'configs.TrainConfig.learning_rate = 1.0',
            "configs.TrainConfig.schedule = 'rsqrt'", f'configs.TrainConfig.warmup_steps = {max(self.steps // 10, 1)}',
            'configs.TrainConfig.grad_clip = 0.0']
    if self.corpus == 'code':
      p += ["configs.DataConfig.task = 'github_bytes'", f"configs.DataConfig.data_dir = '{code_dir}'"]
    return p


def grid(long: bool) -> list[Point]:
  """The default grid: the base comparison (all four models), a second seed, 4x the training, W = 32, fewer
  states, a gate that starts closed (state_gate_bias = 2), the recurrent layer one higher, Adafactor, and the code corpus at two seeds.
  --long adds 256 states, 4x on code, third seeds, and a second seed and W = 32 at 4x the training."""
  pts = [Point(f'base_{m}', m) for m in ('rec', 'slide', 'xl', 'xl4x')]
  pts += [Point(f'seed1_{m}', m, seed=1) for m in ('rec', 'slide')]
  pts += [Point(f'steps4x_{m}', m, steps=4 * BASE_STEPS) for m in ('rec', 'slide')]
  pts += [Point(f'w32_{m}', m, window=32) for m in ('rec', 'slide')]
  pts += [Point('states16_rec', 'rec', states=16)]
  pts += [Point('gatebias2_rec', 'rec', gate_bias=2.0)]  # a gate that starts by keeping 88% of the state
  pts += [Point('layer2_rec', 'rec', rec_layer=2)]  # two layers below the state, one above (paper: 9 and 2)
  pts += [Point(f'adafactor_{m}', m, optimizer='adafactor') for m in ('rec', 'slide')]
  pts += [Point(f'code_{m}', m, corpus='code') for m in ('rec', 'slide')]
  pts += [Point(f'code_seed1_{m}', m, corpus='code', seed=1) for m in ('rec', 'slide')]  # code decides: 2 seeds
  if long:
    pts += [Point('states256_rec', 'rec', states=256)]
    pts += [Point(f'code_steps4x_{m}', m, corpus='code', steps=4 * BASE_STEPS) for m in ('rec', 'slide')]
    pts += [Point(f'seed2_{m}', m, seed=2) for m in ('rec', 'slide')]
    pts += [Point(f'steps4x_seed1_{m}', m, steps=4 * BASE_STEPS, seed=1) for m in ('rec', 'slide')]
    pts += [Point(f'w32_steps4x_{m}', m, window=32, steps=4 * BASE_STEPS) for m in ('rec', 'slide')]
  return pts


def build_code_corpus(folder: pathlib.Path, per_package: int = 512 * 1024) -> pathlib.Path:
  """One sub-folder per installed top-level package, holding its .py files (in path order, up to
  per_package bytes): the GitHub layout (data/corpus.github_folder), from this interpreter's site-packages."""
  if (folder / '.complete').exists():
    return folder
  site = pathlib.Path(sysconfig.get_paths()['purelib'])
  for package in sorted(p for p in site.iterdir() if p.is_dir() and (p / '__init__.py').exists()):
    total = 0
    for path in sorted(package.rglob('*.py')):
      if '__pycache__' in path.parts or 'test' in path.name.lower():
        continue
      size = path.stat().st_size
      if total + size > per_package:
        break
      out = folder / package.name / path.relative_to(package)
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(path.read_bytes())
      total += size
  (folder / '.complete').write_text('')
  return folder


def _run(cmd: list[str], log: pathlib.Path) -> None:
  env = dict(os.environ, NO_GCE_CHECK='true')
  with log.open('a') as f:
    f.write(f'\n$ {" ".join(cmd)}\n')
    f.flush()
    code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
  if code:
    raise SystemExit(f'{cmd[0]} failed with status {code}: see {log}')


def run_point(pt: Point, root: pathlib.Path, code_dir: str, eval_tokens: int) -> dict:
  workdir = root / pt.name
  done = workdir / 'result.json'
  if done.exists():
    return json.loads(done.read_text())
  workdir.mkdir(parents=True, exist_ok=True)
  log = workdir / 'payoff.log'
  bin_dir = pathlib.Path(sys.executable).parent
  t0 = time.time()
  _run([str(bin_dir / 'brt-train'), f'--gin_file={MODELS[pt.model]}', f'--workdir={workdir}']
       + [f'--gin_param={p}' for p in pt.gin_params(code_dir)], log)
  train_seconds = time.time() - t0
  segments = eval_tokens // pt.segment
  scored = {}
  for mode in ('reset_each_segment', 'reset_each_block'):
    out = workdir / f'eval_{mode}.json'
    _run([str(bin_dir / 'brt-eval'), f'--workdir={workdir}', f'--max_segments={segments}', '--by_position',
          f'--ablate_state={mode}', f'--json={out}'], log)
    scored[mode] = json.loads(out.read_text())
  normal = scored['reset_each_segment']
  metrics = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  last_eval = [m for m in metrics if m['split'] == 'validation'][-1]
  result = dict(dataclasses.asdict(pt), label=LABELS[pt.model], segment=pt.segment,
                bits_per_byte=normal['bits_per_byte'], tokens=normal['tokens'], by_position=normal['by_position'],
                gap_segment=scored['reset_each_segment']['ablated']['bits_per_byte'] - normal['bits_per_byte'],
                gap_block=scored['reset_each_block']['ablated']['bits_per_byte'] - normal['bits_per_byte'],
                by_position_reset_segment=scored['reset_each_segment']['ablated']['by_position'],
                by_position_reset_block=scored['reset_each_block']['ablated']['by_position'],
                diagnostics={k: v for k, v in last_eval.items() if '/layer' in k},
                train_seconds=train_seconds, wall_seconds=time.time() - t0)
  done.write_text(json.dumps(result, indent=1))
  return result


def _gate_open(r: dict) -> str:
  values = [v for k, v in r.get('diagnostics', {}).items() if k.startswith('gate_open/')]
  return ', '.join(f'{v:.3f}' for v in values) or '-'


def _same_setting(r: dict, slide: dict | None) -> dict | None:
  """base_slide, for a Rec point that differs from base_rec only on the state side (states16, gatebias2, layer2)."""
  keys = ('corpus', 'window', 'optimizer', 'steps', 'seed')
  return slide if slide and all(r[k] == slide[k] for k in keys) else None


def report(results: list[dict], out: pathlib.Path, eval_tokens: int) -> None:
  """results/recurrence_payoff.md: one row per point, Slide's row of the same setting as the reference."""
  import common  # pylint: disable=import-outside-toplevel
  by_name = {r['name']: r for r in results}
  lines = [common.machine(), '',
           f'Validation bits per byte on the first {eval_tokens:,} tokens of the validation split (one lane). '
           '"vs Slide": the difference to the Slide point of the same setting (negative: better than Slide). '
           'Gaps: bits per byte with the state reset at every segment / every block, minus the normal.', '',
           'Gate open: the mean weight the state update gives the new input, at the last evaluation.', '',
           '| point | model | corpus | W | N | S | optimiser | steps | seed | bits/byte | vs Slide | gap (segment) '
           '| gap (block) | gate open | brt-train s |', '|' + '---|' * 15]
  for r in results:
    twin = by_name.get(r['name'].rsplit('_', 1)[0] + '_slide') or _same_setting(r, by_name.get('base_slide'))
    vs = f'{r["bits_per_byte"] - twin["bits_per_byte"]:+.4f}' if twin and twin is not r else ''
    lines.append(f'| {r["name"]} | {r["label"]} | {r["corpus"]} | {r["window"]} | {r["segment"]} | '
                 f'{r["states"] if r["model"] == "rec" else "-"} | {r["optimizer"]} | {r["steps"]} | {r["seed"]} | '
                 f'{r["bits_per_byte"]:.4f} | {vs} | {r["gap_segment"]:+.4f} | {r["gap_block"]:+.4f} | '
                 f'{_gate_open(r)} | {r["train_seconds"]:.0f} |')
  pairs = [(r, by_name.get(r['name'][:-len('_rec')] + '_slide')) for r in results if r['model'] == 'rec']
  pairs = [(a, b) for a, b in pairs if b]
  if pairs:
    lines += ['', 'Rec:fixed:skip - Slide, bits per byte by position in the document:', '',
              '| positions | ' + ' | '.join(a['name'][:-len('_rec')] for a, _ in pairs) + ' |',
              '|' + '---|' * (1 + len(pairs))]
    for i, bucket in enumerate(pairs[0][0]['by_position']):
      cells = []
      for a, b in pairs:
        ok = i < len(a['by_position']) and i < len(b['by_position'])
        cells.append(f'{a["by_position"][i]["bits_per_byte"] - b["by_position"][i]["bits_per_byte"]:+.4f}' if ok else '')
      lines.append(f'| {bucket["first"]}-{bucket["last"]} | ' + ' | '.join(cells) + ' |')
  out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines[2:]))
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for r in results:
    if r['name'].startswith('base_') or r['name'].startswith('steps4x_'):
      xs = [(b['first'] + b['last'] + 1) / 2 for b in r['by_position']]
      axes[0].plot(xs, [b['bits_per_byte'] for b in r['by_position']], 'o-', ms=3, label=r['name'])
  for a, b in pairs:
    xs = [(x['first'] + x['last'] + 1) / 2 for x in a['by_position']]
    axes[1].plot(xs, [x['bits_per_byte'] - y['bits_per_byte'] for x, y in zip(a['by_position'], b['by_position'])],
                 'o-', ms=3, label=a['name'][:-len('_rec')])
  for ax in axes:
    ax.set_xscale('log')
    ax.set_xlabel('position in the document (tokens)')
    ax.legend(fontsize=7)
  axes[0].set_ylabel('bits per byte')
  axes[1].set_ylabel('Rec:fixed:skip - Slide (bits per byte)')
  axes[1].axhline(0, color='k', lw=0.5)
  fig.tight_layout()
  fig.savefig(out.with_suffix('.png'), dpi=120)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=str(ROOT / 'workdirs' / 'payoff'))
  parser.add_argument('--out', default=str(ROOT / 'results' / 'recurrence_payoff'))
  parser.add_argument('--code_dir', default=None, help='a GitHub-layout corpus (default: built in WORKDIR/code)')
  parser.add_argument('--eval_tokens', type=int, default=65536)
  parser.add_argument('--long', action='store_true', help='the longer grid')
  parser.add_argument('--only', nargs='+', default=None, help='these points only')
  parser.add_argument('--steps', type=int, default=None,
                      help='train every point this many steps instead (a quick try; its own --workdir please)')
  parser.add_argument('--list', action='store_true')
  parser.add_argument('--report', action='store_true', help='only rewrite the table from the finished points')
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  points = grid(args.long)
  if args.only:
    unknown = sorted(set(args.only) - {p.name for p in grid(True)})
    if unknown:
      parser.error(f'unknown points {unknown}: see --list')
    every = {p.name: p for p in grid(True)}
    points = [every[name] for name in args.only]  # in the order given
  if args.steps:
    points = [dataclasses.replace(p, steps=args.steps) for p in points]
  if args.list:
    for p in points:
      print(f'{p.name:24} {"done" if (root / p.name / "result.json").exists() else "-":5} {p}')
    return
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  code_dir = args.code_dir
  if code_dir is None and any(p.corpus == 'code' for p in points) and not args.report:
    code_dir = str(build_code_corpus(root / 'code'))
  def finished() -> list[dict]:  # every finished point of the long grid, in its order
    return [json.loads((root / p.name / 'result.json').read_text()) for p in grid(True)
            if (root / p.name / 'result.json').exists()]

  for p in points:
    if args.report:
      break
    print(f'=== {p.name}: {p}', flush=True)
    r = run_point(p, root, code_dir or str(root / 'code'), args.eval_tokens)
    print(f'{p.name}: bits/byte {r["bits_per_byte"]:.4f}  gap (segment) {r["gap_segment"]:+.4f}  '
          f'gap (block) {r["gap_block"]:+.4f}  {r["wall_seconds"]:.0f} s', flush=True)
    with out.with_suffix('.jsonl').open('a') as f:
      f.write(json.dumps({k: v for k, v in r.items() if not k.startswith('by_position')}) + '\n')
    report(finished(), out, args.eval_tokens)
  if args.report:
    report(finished(), out, args.eval_tokens)


if __name__ == '__main__':
  main()
