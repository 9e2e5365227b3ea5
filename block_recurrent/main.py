"""`brt-train`, `brt-eval`, `brt-generate`: gin-configured training, scoring and generation (also `python -m block_recurrent.main`).

    brt-train --gin_file=gin/experiments/local_cpu.gin [--gin_param=...] --workdir=DIR [--load_dir=DIR]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I | --distributed]
    brt-eval --workdir=DIR [--split=test] [--task=pg19_bytes] [--data_dir=...] [--step=N] [--losses_file=F]
    brt-generate --workdir=DIR --prompt="..." --max_new_tokens=N [--temperature --top_k --top_p --seed]

Every command takes --debug. Without it an error is one line on stderr, `PROG: error: ...`, with exit
status 2 for bad input (configuration, data, vocabulary, checkpoint, flags) and 1 for anything unexpected;
with it the exception propagates with its traceback.

gin binds ModelConfig, DataConfig, TrainConfig and MeshConfig; the bindings in force are written to
DIR/config.gin, which brt-eval reads back. Re-running brt-train with the same workdir resumes from its
newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')


def _configs(gin_files, gin_params):
  from block_recurrent import configs, ginconf
  ginconf.parse(gin_files, gin_params)
  return (ginconf.bound_model_config(), ginconf.bound_data_config(), ginconf.bound(configs.TrainConfig),
          ginconf.bound(configs.MeshConfig))


def _workdir_configs(workdir: str, gin_params):
  """The configs a brt-train workdir was trained with (its config.gin), plus extra bindings."""
  from block_recurrent import configs
  from block_recurrent.train import checkpoint  # pylint: disable=import-outside-toplevel
  config_file = checkpoint.path(workdir) / 'config.gin'
  if not config_file.is_file():
    raise configs.ConfigError(f'{config_file} not found: --workdir must be a folder brt-train wrote')
  if '://' in str(config_file):  # gin reads local files: a bucket's config.gin is read through a copy
    import tempfile  # pylint: disable=import-outside-toplevel
    local = pathlib.Path(tempfile.mkdtemp()) / 'config.gin'
    local.write_text(config_file.read_text())
    config_file = local
  return _configs([str(config_file)], gin_params)


def _check_data(data_cfg) -> None:
  """The task and its vocabulary, before anything is built or written (no document is read here)."""
  from block_recurrent.data import tasks, vocab as vocab_lib  # pylint: disable=import-outside-toplevel
  if data_cfg.task.endswith('_tokens'):
    vocab_lib.check_model(data_cfg.spm_path or tasks.DEFAULT_SPM)
  tasks.task(data_cfg.task, data_cfg.data_dir, data_cfg.spm_path)  # an unknown corpus fails here


def _check_load_dir(load_dir: str) -> None:
  from block_recurrent import configs
  from block_recurrent.train import checkpoint  # pylint: disable=import-outside-toplevel
  source = checkpoint.path(load_dir) / 'checkpoints'
  if not source.is_dir() or not any(p.name.isdigit() for p in source.iterdir()):
    raise configs.ConfigError(f'--load_dir {load_dir} has no checkpoints folder with a checkpoint in it: point it '
                              'at a brt-train workdir')


def _check_given(flag: str, value: str | None, what: str) -> None:
  """An empty string (often an unset shell variable) is never taken to mean the current folder or nothing."""
  from block_recurrent import configs
  if value == '':
    raise configs.ConfigError(f'{flag} is empty: give {what}')


def _check_train_flags(args) -> None:
  """brt-train's own flags, right after argparse: before gin is parsed, a JAX call or any training."""
  from block_recurrent import distributed  # pylint: disable=import-outside-toplevel
  _check_given('--workdir', args.workdir, 'the folder the run writes to')
  _check_given('--load_dir', args.load_dir, 'the brt-train workdir to start from, or leave it out')
  distributed.check_args(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)


def main(argv: list[str] | None = None) -> int:
  from block_recurrent.train import preemption  # pylint: disable=import-outside-toplevel
  preemption.install()  # first: a SIGTERM during start-up still ends in a checkpoint and exit status 0
  import gin

  from block_recurrent import cli, configs, ginconf
  parser = argparse.ArgumentParser(prog='brt-train', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--load_dir', default=None, help="start from another run's parameters (fine-tuning)")
  parser.add_argument('--reset_optimizer', action='store_true', help='with --load_dir: fresh optimiser state')
  parser.add_argument('--coordinator_address', default=None,
                      help='HOST:PORT of process 0 in a multi-process run (automatic on a Cloud TPU slice)')
  parser.add_argument('--num_processes', type=int, default=None, help='processes in a multi-process run')
  parser.add_argument('--process_id', type=int, default=None, help="this process's index, 0 .. num_processes-1")
  parser.add_argument('--distributed', action='store_true',
                      help="join a multi-process run that JAX detects itself (every worker of a Cloud TPU slice)")
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    _check_train_flags(args)
    model_cfg, data_cfg, train_cfg, mesh_cfg = _configs(args.gin_file, args.gin_param)
    if args.reset_optimizer and args.load_dir is None:
      raise configs.ConfigError('--reset_optimizer applies to the parameters --load_dir starts from: add '
                                '--load_dir=WORKDIR or drop --reset_optimizer')
    if args.load_dir is not None:
      _check_load_dir(args.load_dir)
    from block_recurrent import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)
    _check_data(data_cfg)
    import jax  # pylint: disable=import-outside-toplevel
    from block_recurrent.train import loop  # heavy imports only once the config is known to be good
    lead = jax.process_index() == 0  # one process prints; every process trains and checkpoints
    loop.train(model_cfg, data_cfg, train_cfg, mesh_cfg, args.workdir, load_dir=args.load_dir,
               reset_optimizer=args.reset_optimizer, config_text=gin.config_str(),
               echo=lambda line: print(line, flush=True) if lead else None)
    return 0

  try:
    return cli.guarded('brt-train', args.debug, body)
  finally:
    preemption.uninstall()


def eval_main(argv: list[str] | None = None) -> int:
  """brt-eval: scores a trained workdir's checkpoint on a whole split, carrying the state through every
  segment of every document; prints `bits per byte: X` and `bits per token: X`."""
  import dataclasses

  from block_recurrent import cli, configs
  parser = argparse.ArgumentParser(prog='brt-eval', description=eval_main.__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a brt-train workdir (its config.gin and checkpoints)')
  parser.add_argument('--split', default='validation', help='train, validation or test')
  parser.add_argument('--task', default=None, help="another registered task, e.g. pg19_bytes (default: the run's)")
  parser.add_argument('--data_dir', default=None, help='corpus folder for --task')
  parser.add_argument('--spm_path', default=None, help='SentencePiece model for a *_tokens --task')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  parser.add_argument('--losses_file', default=None,
                      help='write every token\'s loss (doc_id, position, token, bits) to this TSV file')
  parser.add_argument('--gin_param', action='append', default=[], help='extra binding, e.g. eval_batch_size')
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    if args.split not in ('train', 'validation', 'test'):
      raise configs.ConfigError(f'--split {args.split!r}: use train, validation or test')
    _check_step(args.step)
    _check_given('--task', args.task, "a task such as pg19_bytes, or leave it out for the run's")
    _check_given('--data_dir', args.data_dir, 'the corpus folder, or leave it out')
    _check_given('--spm_path', args.spm_path, 'a SentencePiece model file (PREFIX.model), or leave it out')
    _check_given('--losses_file', args.losses_file, 'a file name such as losses.tsv, or leave it out')
    model_cfg, data_cfg, train_cfg, mesh_cfg = _workdir_configs(args.workdir, args.gin_param)
    if args.task:
      data_cfg = dataclasses.replace(data_cfg, task=args.task, data_dir=args.data_dir, spm_path=args.spm_path)
    elif args.data_dir or args.spm_path:
      data_cfg = dataclasses.replace(data_cfg, data_dir=args.data_dir or data_cfg.data_dir,
                                     spm_path=args.spm_path or data_cfg.spm_path)
    _check_data(data_cfg)
    from block_recurrent.train import scoring
    result = scoring.evaluate_workdir(model_cfg, data_cfg, train_cfg, mesh_cfg, args.workdir, split=args.split,
                                      step=args.step, losses_file=args.losses_file,
                                      echo=lambda line: print(line, flush=True))
    print(f'tokens: {result["tokens"]:.0f}  bytes: {result["bytes"]:.0f}  documents: {result["documents"]}')
    print(f'bits per byte: {result["bits_per_byte"]:.6f}')
    print(f'bits per token: {result["bits_per_token"]:.6f}')
    return 0

  return cli.guarded('brt-eval', args.debug, body)


def _check_step(step: int | None) -> None:
  from block_recurrent import configs
  if step is not None and step < 0:
    raise configs.ConfigError(f'--step {step}: give the step of a saved checkpoint, or leave it out for the newest')


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


def generate_main(argv: list[str] | None = None) -> int:
  """brt-generate: continues a prompt with a trained workdir's model, streaming the text as it comes."""
  from block_recurrent import cli, configs
  parser = argparse.ArgumentParser(prog='brt-generate', description=generate_main.__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a brt-train workdir (its config.gin and checkpoints)')
  parser.add_argument('--prompt', default=None, help='the beginning of the document (default: empty)')
  parser.add_argument('--prompt_file', default=None, help='read the prompt from this UTF-8 file')
  parser.add_argument('--max_new_tokens', type=int, default=256)
  parser.add_argument('--temperature', type=float, default=1.0, help='0 is greedy')
  parser.add_argument('--top_k', type=int, default=0, help='sample from the k likeliest tokens (0: all)')
  parser.add_argument('--top_p', type=float, default=1.0, help='nucleus sampling mass (1: all)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the newest)')
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    if args.prompt is not None and args.prompt_file is not None:
      raise configs.ConfigError('give --prompt or --prompt_file, not both')
    _check_sampling(args)
    _check_step(args.step)
    prompt = args.prompt or ''
    if args.prompt_file is not None:
      try:
        prompt = pathlib.Path(args.prompt_file).read_bytes().decode('utf-8')
      except OSError as e:
        raise configs.ConfigError(f'cannot read --prompt_file {args.prompt_file}: {e.strerror}') from None
      except UnicodeDecodeError as e:
        raise configs.ConfigError(f'--prompt_file {args.prompt_file} is not UTF-8 (byte {e.start})') from None
    _check_prompt(prompt)
    model_cfg, data_cfg, train_cfg, mesh_cfg = _workdir_configs(args.workdir, [])
    _check_top_k(args.top_k, model_cfg, args.workdir)
    _check_data(data_cfg)
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

  return cli.guarded('brt-generate', args.debug, body)


def run() -> None:
  sys.exit(main())


def run_eval() -> None:
  sys.exit(eval_main())


def run_generate() -> None:
  sys.exit(generate_main())


if __name__ == '__main__':
  run()
