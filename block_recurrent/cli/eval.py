"""`brt-eval`: scores a trained workdir's checkpoint on a whole split.

    brt-eval --workdir=DIR [--split=test] [--task=pg19_bytes] [--data_dir=...] [--step=N] [--losses_file=F]
             [--by_position] [--ablate_state=reset_each_block|reset_each_segment] [--json=FILE] [--max_segments=K]

--by_position adds bits per byte and per token by position in the document (log-spaced buckets: tokens 0-63,
64-255, ...). --ablate_state scores the split a second time with the recurrent state restarted from its
learned initial value at every block or every segment (a Transformer-XL model: its cache dropped) and
prints both and their difference per bucket: how much the model relies on what it carries. Either writes
the numbers as JSON to --json (default DIR/eval/SPLIT-STEP.json).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')

from block_recurrent.cli import common, contract


def _parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='brt-eval', description=description)
  parser.add_argument('--workdir', required=True, help='a brt-train workdir (its config.gin and checkpoints)')
  parser.add_argument('--split', default='validation', help='train, validation or test')
  parser.add_argument('--task', default=None, help="another registered task, e.g. pg19_bytes (default: the run's)")
  parser.add_argument('--data_dir', default=None, help='corpus folder for --task')
  parser.add_argument('--spm_path', default=None, help='SentencePiece model for a *_tokens --task')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  parser.add_argument('--losses_file', default=None,
                      help='write every token\'s loss (doc_id, position, token, bits) to this TSV file')
  parser.add_argument('--by_position', action='store_true',
                      help='bits per byte and per token by position in the document, in log-spaced buckets')
  parser.add_argument('--ablate_state', default='none', choices=('none', 'reset_each_block', 'reset_each_segment'),
                      help='also score with the recurrent state reset at every block or segment, and compare')
  parser.add_argument('--max_segments', type=int, default=0,
                      help='score only the first K segments of every evaluation lane (default 0: the whole split)')
  parser.add_argument('--json', default=None,
                      help='where --by_position / --ablate_state write their numbers (default DIR/eval/SPLIT-STEP.json)')
  parser.add_argument('--gin_param', action='append', default=[], help='extra binding, e.g. eval_batch_size')
  return parser


def main(argv: list[str] | None = None) -> int:
  """brt-eval: scores a trained workdir's checkpoint on a whole split, carrying the state through every
  segment of every document; prints `bits per byte: X` and `bits per token: X`."""
  import dataclasses

  from block_recurrent import configs
  parser = _parser(main.__doc__.splitlines()[0])
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    if args.split not in ('train', 'validation', 'test'):
      raise configs.ConfigError(f'--split {args.split!r}: use train, validation or test')
    common.check_step(args.step)
    if args.max_segments < 0:
      raise configs.ConfigError(f'--max_segments {args.max_segments}: give a positive number of segments, or 0 for all')
    common.check_given('--task', args.task, "a task such as pg19_bytes, or leave it out for the run's")
    common.check_given('--data_dir', args.data_dir, 'the corpus folder, or leave it out')
    common.check_given('--spm_path', args.spm_path, 'a SentencePiece model file (PREFIX.model), or leave it out')
    common.check_given('--losses_file', args.losses_file, 'a file name such as losses.tsv, or leave it out')
    common.check_given('--json', args.json, 'a file name such as by_position.json, or leave it out')
    if args.json and os.path.isdir(args.json):
      raise configs.ConfigError(f'--json {args.json} is a folder: give a file name such as {args.json}/eval.json')
    from block_recurrent.train import workdir as workdir_lib
    model_cfg, data_cfg, train_cfg, mesh_cfg = workdir_lib.read_configs(args.workdir, args.gin_param)
    if args.task:
      data_cfg = dataclasses.replace(data_cfg, task=args.task, data_dir=args.data_dir, spm_path=args.spm_path)
    elif args.data_dir or args.spm_path:
      data_cfg = dataclasses.replace(data_cfg, data_dir=args.data_dir or data_cfg.data_dir,
                                     spm_path=args.spm_path or data_cfg.spm_path)
    common.check_data(data_cfg)
    from block_recurrent.train import scoring
    result = scoring.evaluate_workdir(model_cfg, data_cfg, train_cfg, mesh_cfg, args.workdir, split=args.split,
                                      step=args.step, losses_file=args.losses_file,
                                      by_position=args.by_position or args.ablate_state != 'none',
                                      ablate_state=args.ablate_state, max_segments=args.max_segments,
                                      echo=lambda line: print(line, flush=True))
    print(f'tokens: {result["tokens"]:.0f}  bytes: {result["bytes"]:.0f}  documents: {result["documents"]}')
    print(f'bits per byte: {result["bits_per_byte"]:.6f}')
    print(f'bits per token: {result["bits_per_token"]:.6f}')
    if 'by_position' in result:
      _report(args, result)
    return 0

  return contract.guarded('brt-eval', args.debug, body)


def _report(args, result: dict) -> None:
  """The per-position tables (and the ablation's), and the JSON file."""
  from block_recurrent.train import positions  # pylint: disable=import-outside-toplevel
  print(positions.table(result['by_position']))
  ablated = result.get('ablated')
  if ablated:
    mode = ablated['mode']
    print(f'with --ablate_state={mode}:')
    print(f'bits per byte: {ablated["bits_per_byte"]:.6f} ({ablated["bits_per_byte"] - result["bits_per_byte"]:+.6f})')
    print(f'bits per token: {ablated["bits_per_token"]:.6f} '
          f'({ablated["bits_per_token"] - result["bits_per_token"]:+.6f})')
    print(positions.difference_table(result['by_position'], ablated['by_position'], 'normal', mode))
  path = args.json or f'{args.workdir}/eval/{args.split}-{result["step"]}.json'
  keep = ('step', 'documents', 'tokens', 'bytes', 'bits_per_byte', 'bits_per_token', 'by_position')
  payload = dict({k: result[k] for k in keep}, workdir=args.workdir, split=args.split,
                 **({'ablated': {k: ablated[k] for k in ('mode',) + keep[2:]}} if ablated else {}))
  print(f'wrote {positions.write_json(path, payload)}')


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
