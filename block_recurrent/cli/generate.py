"""`brt-generate`: continues a prompt with a trained workdir's model, streaming the text as it comes.

    brt-generate --workdir=DIR --prompt="..." --max_new_tokens=N [--temperature --top_k --top_p --seed]
"""

from __future__ import annotations

import argparse
import pathlib
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')

from block_recurrent.cli import common, contract


def _check_sampling(args) -> None:
  """brt-generate's flags, before the checkpoint is restored (generation.py checks them again)."""
  import math  # pylint: disable=import-outside-toplevel

  from block_recurrent import configs
  if args.max_new_tokens < 0:
    raise configs.ConfigError(f'--max_new_tokens must be >= 0, got {args.max_new_tokens}')
  if not (math.isfinite(args.temperature) and args.temperature >= 0):
    raise configs.ConfigError(f'--temperature must be a number >= 0 (0 is greedy), got {args.temperature}')
  if args.top_k < 0:
    raise configs.ConfigError(f'--top_k must be >= 0 (0 keeps every token), got {args.top_k}')
  if not 0.0 < args.top_p <= 1.0:
    raise configs.ConfigError(f'--top_p must lie in (0, 1] (1 keeps every token), got {args.top_p}')
  if not 0 <= args.seed < 2 ** 32:
    raise configs.ConfigError(f'--seed {args.seed}: give an integer from 0 to {2 ** 32 - 1}')


def _check_prompt(prompt: str) -> None:
  """A prompt from the command line holds bytes that are not UTF-8 as lone surrogates (Python decodes argv
  with surrogateescape): say which byte, not UnicodeEncodeError."""
  from block_recurrent import configs
  try:
    prompt.encode('utf-8')
  except UnicodeEncodeError:
    try:
      prompt.encode('utf-8', 'surrogateescape').decode('utf-8')
      where = ''
    except UnicodeDecodeError as e:
      where = f' (byte {e.start})'
    except UnicodeEncodeError as e:
      where = f' (character {e.start})'
    raise configs.ConfigError(f'--prompt is not UTF-8{where}: pass UTF-8 text, or put it in a UTF-8 file and '
                              'give --prompt_file') from None


def _check_top_k(top_k: int, model_cfg, workdir: str) -> None:
  """jax.lax.top_k takes at most the vocabulary: checked against the run's config.gin, before the restore."""
  from block_recurrent import configs
  if top_k > model_cfg.vocab_size:
    vocab = model_cfg.vocab_size
    raise configs.ConfigError(f'--top_k {top_k} is more than the {vocab} tokens of the model in --workdir {workdir}: '
                              f'give at most {vocab}, or 0 to keep every token')


def main(argv: list[str] | None = None) -> int:
  """brt-generate: continues a prompt with a trained workdir's model, streaming the text as it comes."""
  from block_recurrent import configs, errors
  parser = argparse.ArgumentParser(prog='brt-generate', description=main.__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a brt-train workdir (its config.gin and checkpoints)')
  parser.add_argument('--prompt', default=None, help='the beginning of the document (default: empty)')
  parser.add_argument('--prompt_file', default=None, help='read the prompt from this UTF-8 file')
  parser.add_argument('--max_new_tokens', type=int, default=256)
  parser.add_argument('--temperature', type=float, default=1.0, help='0 is greedy')
  parser.add_argument('--top_k', type=int, default=0, help='sample from the k likeliest tokens (0: all)')
  parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling mass (1: all)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    if args.prompt is not None and args.prompt_file is not None:
      raise configs.ConfigError('give --prompt or --prompt_file, not both')
    _check_sampling(args)
    common.check_step(args.step)
    prompt = args.prompt or ''
    if args.prompt_file is not None:
      try:
        prompt = pathlib.Path(args.prompt_file).read_bytes().decode('utf-8')
      except OSError as e:
        raise errors.IOFailure(f'cannot read --prompt_file {args.prompt_file}: {e.strerror}') from None
      except UnicodeDecodeError as e:
        raise configs.ConfigError(f'--prompt_file {args.prompt_file} is not UTF-8 (byte {e.start})') from None
    _check_prompt(prompt)
    from block_recurrent.train import workdir as workdir_lib
    model_cfg, data_cfg, train_cfg, mesh_cfg = workdir_lib.read_configs(args.workdir)
    _check_top_k(args.top_k, model_cfg, args.workdir)
    common.check_data(data_cfg)
    from block_recurrent import generation as gen_lib
    from block_recurrent.train import scoring
    from flax import nnx
    s, _, state = scoring.restore_workdir(model_cfg, data_cfg, train_cfg, mesh_cfg, args.workdir, args.step)
    model = nnx.merge(s.graphdef, state.params)
    codec = gen_lib.codec_for(data_cfg.task, data_cfg.spm_path)
    gen_lib.generate(model, None, prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, seed=args.seed, codec=codec,
                     stream=lambda text: print(text, end='', flush=True))
    print()
    return 0

  return contract.guarded('brt-generate', args.debug, body)


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
