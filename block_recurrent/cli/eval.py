"""`brt-eval`: scores a trained workdir's checkpoint on a whole split.

    brt-eval --workdir=DIR [--split=test] [--task=pg19_bytes] [--data_dir=...] [--step=N] [--losses_file=F]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')

from block_recurrent.cli import common, contract


def main(argv: list[str] | None = None) -> int:
  """brt-eval: scores a trained workdir's checkpoint on a whole split, carrying the state through every
  segment of every document; prints `bits per byte: X` and `bits per token: X`."""
  import dataclasses

  from block_recurrent import configs
  parser = argparse.ArgumentParser(prog='brt-eval', description=main.__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a brt-train workdir (its config.gin and checkpoints)')
  parser.add_argument('--split', default='validation', help='train, validation or test')
  parser.add_argument('--task', default=None, help="another registered task, e.g. pg19_bytes (default: the run's)")
  parser.add_argument('--data_dir', default=None, help='corpus folder for --task')
  parser.add_argument('--spm_path', default=None, help='SentencePiece model for a *_tokens --task')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  parser.add_argument('--losses_file', default=None,
                      help='write every token\'s loss (doc_id, position, token, bits) to this TSV file')
  parser.add_argument('--gin_param', action='append', default=[], help='extra binding, e.g. eval_batch_size')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    if args.split not in ('train', 'validation', 'test'):
      raise configs.ConfigError(f'--split {args.split!r}: use train, validation or test')
    common.check_step(args.step)
    common.check_given('--task', args.task, "a task such as pg19_bytes, or leave it out for the run's")
    common.check_given('--data_dir', args.data_dir, 'the corpus folder, or leave it out')
    common.check_given('--spm_path', args.spm_path, 'a SentencePiece model file (PREFIX.model), or leave it out')
    common.check_given('--losses_file', args.losses_file, 'a file name such as losses.tsv, or leave it out')
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
                                      echo=lambda line: print(line, flush=True))
    print(f'tokens: {result["tokens"]:.0f}  bytes: {result["bytes"]:.0f}  documents: {result["documents"]}')
    print(f'bits per byte: {result["bits_per_byte"]:.6f}')
    print(f'bits per token: {result["bits_per_token"]:.6f}')
    return 0

  return contract.guarded('brt-eval', args.debug, body)


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
