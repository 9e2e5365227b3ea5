"""brt-compare: several experiments trained on the same data for the same number of steps (or the same
training time), their validation bits per byte against steps and against training time on one chart,
and a table.

    brt-compare [--gin_file=A.gin --gin_file=B.gin ...] [--gin_param=...] [--steps=N | --seconds=T]
                [--eval_every=K] [--eval_tokens=M] [--workdir=workdirs/compare] [--names A B ...]

Each --gin_file is one whole experiment (model, task, training recipe); --gin_param bindings apply to
all. Without --gin_file the paper's comparison runs at a CPU width (gin/experiments/compare/: XL at the
window W = 64, XL with a 4x window, Slide and Rec:fixed:skip at W = 64, 2048 tokens per step each).
Every experiment must read the same task. They run one after the other in this process, each in
WORKDIR/NAME with brt-train's loop (a rerun resumes them), and each is evaluated every K steps on the same
first M tokens of the validation split, streamed through one lane with the state carried across
segments (the segment count is M / N, so experiments with different segment lengths N read the same
text). Training time leaves out compilation and evaluation. --steps sets TrainConfig.num_steps (so the
learning-rate schedule ends there); --seconds keeps each recipe's num_steps and stops every experiment
after that much training time instead. Once trained, each is scored by position in the document on the
same validation text (train/positions.py: log-spaced buckets of tokens 0-63, 64-255, ...), and a panel
gives each model's difference to the first per bucket. Writes WORKDIR/compare.{md,json,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

os.environ.setdefault('NO_GCE_CHECK', 'true')

DEFAULT = ['gin/experiments/compare/xl.gin', 'gin/experiments/compare/xl_4x.gin',
           'gin/experiments/compare/slide.gin', 'gin/experiments/compare/rec_fixed_skip.gin']
DEFAULT_NAMES = ['XL:W', 'XL:4W', 'Slide', 'Rec:fixed:skip']


@dataclasses.dataclass
class Experiment:
  name: str
  gin_file: str
  configs: tuple  # ModelConfig, DataConfig, TrainConfig, MeshConfig
  config_text: str


def _experiments(args) -> list[Experiment]:
  import gin  # pylint: disable=import-outside-toplevel

  from block_recurrent import configs, ginconf  # pylint: disable=import-outside-toplevel
  files = args.gin_file or DEFAULT
  names = args.names or (DEFAULT_NAMES if not args.gin_file else [pathlib.Path(f).stem for f in files])
  if len(names) != len(files):
    raise configs.ConfigError(f'--names gives {len(names)} names for {len(files)} --gin_file experiments: give one '
                              'name per experiment')
  if len(set(names)) != len(names):
    raise configs.ConfigError(f'experiment names must differ, got {names}: pass --names')
  if args.steps is not None and args.seconds is not None:
    raise configs.ConfigError('give --steps or --seconds, not both')
  out = []
  for name, path in zip(names, files):
    ginconf.parse([path], args.gin_param)
    model_cfg, data_cfg, train_cfg, mesh_cfg = ginconf.bound_configs()
    segments = max(1, args.eval_tokens // model_cfg.segment_length)
    changes = dict(eval_every=args.eval_every, eval_segments=segments, checkpoint_every=10 ** 9,
                   log_every=min(train_cfg.log_every, args.eval_every) or args.eval_every)
    if args.steps is not None:
      changes['num_steps'] = args.steps
    if args.seconds is not None:
      changes['max_train_seconds'] = args.seconds
    train_cfg = dataclasses.replace(train_cfg, **changes)
    out.append(Experiment(name, path, (model_cfg, data_cfg, train_cfg, mesh_cfg), gin.config_str()))
  tasks = {(e.configs[1].task, e.configs[1].data_dir, e.configs[1].spm_path) for e in out}
  if len(tasks) > 1:
    raise configs.ConfigError(f'the experiments read different data ({sorted(tasks, key=str)}): a comparison needs '
                              'one task; bind configs.DataConfig.task with --gin_param')
  return out


def _curve(workdir: pathlib.Path) -> list[dict]:
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  by_step = {r['step']: r for r in rows if r['split'] == 'validation' and not r.get('interrupted')}
  return [by_step[k] for k in sorted(by_step)]


def _table(results: list[dict], experiments: list[Experiment], args) -> list[str]:
  """compare.md's lines: the final bits per byte of each experiment, then the per-position panel."""
  from block_recurrent.train import positions  # pylint: disable=import-outside-toplevel
  headers = ['experiment', 'N / W', 'batch', 'non-embedding params', 'steps', 'training s',
             'validation bits/byte', 'vs best']
  finals = [r['curve'][-1]['bits_per_byte'] if r['curve'] else float('nan') for r in results]
  best = min(finals)
  lines = [f'brt-compare: {len(results)} experiments on {experiments[0].configs[1].task}, validation = the first '
           f'{args.eval_tokens:,} tokens of the validation split; '
           + (f'{args.seconds:g} s of training each' if args.seconds is not None else f'{results[0]["steps"]} steps each'),
           '', '| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  for r, final in zip(results, finals):
    seconds = r['curve'][-1].get('train_seconds', float('nan')) if r['curve'] else float('nan')
    lines.append(f'| {r["name"]} | {r["segment"]} / {r["window"]} | {r["batch"]} | {r["non_embedding_params"]:,} | '
                 f'{r["steps"]} | {seconds:.0f} | {final:.4f} | {final - best:+.4f} |')
  lines += ['', f'Validation bits per byte by position in the document (the same {args.eval_tokens:,} tokens), each '
            f'model against {results[0]["name"]}:', '',
            positions.compare_table({r['name']: r['by_position'] for r in results})]
  return lines


def run(args) -> int:
  from block_recurrent import flops  # pylint: disable=import-outside-toplevel
  from block_recurrent.diagnostics import plots  # pylint: disable=import-outside-toplevel
  from block_recurrent.api import abstract_model, count_params  # pylint: disable=import-outside-toplevel
  from block_recurrent.train import loop, scoring  # pylint: disable=import-outside-toplevel
  experiments = _experiments(args)
  root = pathlib.Path(args.workdir)
  results = []
  for e in experiments:
    model_cfg, data_cfg, train_cfg, mesh_cfg = e.configs
    print(f'\n=== {e.name} ({e.gin_file}) ===', flush=True)
    t0 = time.perf_counter()
    out = loop.train(model_cfg, data_cfg, train_cfg, mesh_cfg, str(root / e.name), config_text=e.config_text,
                     echo=lambda line: print(line, flush=True))
    total = count_params(abstract_model(model_cfg))
    results.append({'name': e.name, 'gin_file': e.gin_file, 'segment': model_cfg.segment_length,
                    'window': model_cfg.window, 'batch': data_cfg.batch_size,
                    'non_embedding_params': total - flops.embedding_params(model_cfg),
                    'steps': int(out['state'].step), 'wall_seconds': time.perf_counter() - t0,
                    'tokens_per_s': (out['train'] or {}).get('tokens_per_s'),
                    'curve': _curve(root / e.name)})
    scored = scoring.evaluate_workdir(model_cfg, data_cfg, train_cfg, mesh_cfg, str(root / e.name), by_position=True,
                                      max_segments=train_cfg.eval_segments, echo=lambda line: print(line, flush=True))
    results[-1]['by_position'] = scored['by_position']

  lines = _table(results, experiments, args)
  text = '\n'.join(lines)
  print('\n' + text)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'compare.md').write_text(text + '\n')

  def draw(ax):
    fig = ax.figure
    ax.remove()
    by_step, by_time, by_position = fig.subplots(1, 3)
    for r in results:
      xs = [c['step'] for c in r['curve']]
      ys = [c['bits_per_byte'] for c in r['curve']]
      by_step.plot(xs, ys, 'o-', ms=3, label=r['name'])
      by_time.plot([c.get('train_seconds', 0.0) for c in r['curve']], ys, 'o-', ms=3, label=r['name'])
    by_step.set_xlabel('training step')
    by_time.set_xlabel('training time (s)')
    by_step.set_ylabel('validation bits per byte')
    by_step.legend(fontsize=7)
    for r in results:
      first = results[0]['by_position']
      xs = [(b['first'] + b['last'] + 1) / 2 for b in r['by_position']]
      by_position.plot(xs, [b['bits_per_byte'] - f['bits_per_byte'] for b, f in zip(r['by_position'], first)],
                       'o-', ms=3, label=r['name'])
    by_position.set_xscale('log')
    by_position.set_xlabel('position in the document (tokens)')
    by_position.set_ylabel(f'bits per byte - {results[0]["name"]}')
    fig.suptitle('brt-compare: validation bits per byte', fontsize=9)

  plots.save(str(root / 'compare'), results, draw, figsize=(13, 3.8))
  return 0


def main(argv: list[str] | None = None) -> int:
  from block_recurrent.cli import contract  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='brt-compare', description=__doc__.splitlines()[0])
  parser.add_argument('--gin_file', action='append', default=[], help='one whole experiment; repeat to compare')
  parser.add_argument('--gin_param', action='append', default=[], help='a binding applied to every experiment')
  parser.add_argument('--names', nargs='+', default=None, help='one label per --gin_file')
  parser.add_argument('--steps', type=int, default=None, help='training steps per experiment (default: 400)')
  parser.add_argument('--seconds', type=float, default=None, help='training time per experiment, instead of --steps')
  parser.add_argument('--eval_every', type=int, default=100)
  parser.add_argument('--eval_tokens', type=int, default=65536, help='validation tokens per evaluation')
  parser.add_argument('--workdir', default='workdirs/compare')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)
  if args.steps is None and args.seconds is None:
    args.steps = 400
  for flag in ('steps', 'eval_every', 'eval_tokens'):
    if getattr(args, flag) is not None and getattr(args, flag) <= 0:
      parser.error(f'--{flag} must be positive')
  if args.seconds is not None and args.seconds <= 0:
    parser.error('--seconds must be positive')
  return contract.guarded('brt-compare', args.debug, lambda: run(args))


def run_cli() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run_cli()
