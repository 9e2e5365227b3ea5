"""`brt-train`: gin-configured training (also `python -m block_recurrent.train`).

    brt-train --gin_file=gin/experiments/local_cpu.gin [--gin_param=...] --workdir=DIR [--load_dir=DIR]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I | --distributed]

gin binds ModelConfig, DataConfig, TrainConfig and MeshConfig; the bindings in force are written to
DIR/config.gin, which brt-eval and brt-generate read back. Re-running brt-train with the same workdir resumes
from its newest checkpoint. Errors follow the commands' contract (block_recurrent/cli/contract.py).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')

from block_recurrent.cli import common, contract


def _check_train_flags(args) -> None:
  """brt-train's own flags, right after argparse: before gin is parsed, a JAX call or any training."""
  from block_recurrent.train import distributed  # pylint: disable=import-outside-toplevel
  common.check_given('--workdir', args.workdir, 'the folder the run writes to')
  common.check_given('--load_dir', args.load_dir, 'the brt-train workdir to start from, or leave it out')
  distributed.check_args(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)


def main(argv: list[str] | None = None) -> int:
  from block_recurrent.train import preemption  # pylint: disable=import-outside-toplevel
  preemption.install()  # first: a SIGTERM during start-up still ends in a checkpoint and exit status 0
  import gin

  from block_recurrent import configs, ginconf
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
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    _check_train_flags(args)
    model_cfg, data_cfg, train_cfg, mesh_cfg = common.configs_from_gin(args.gin_file, args.gin_param)
    if args.reset_optimizer and args.load_dir is None:
      raise configs.ConfigError('--reset_optimizer applies to the parameters --load_dir starts from: add '
                                '--load_dir=WORKDIR or drop --reset_optimizer')
    if args.load_dir is not None:
      from block_recurrent.train import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
      workdir_lib.check_load_dir(args.load_dir)
    from block_recurrent.train import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id, auto=args.distributed)
    common.check_data(data_cfg)
    import jax  # pylint: disable=import-outside-toplevel
    from block_recurrent.train import loop  # heavy imports only once the config is known to be good
    lead = jax.process_index() == 0  # one process prints; every process trains and checkpoints
    loop.train(model_cfg, data_cfg, train_cfg, mesh_cfg, args.workdir, load_dir=args.load_dir,
               reset_optimizer=args.reset_optimizer, config_text=gin.config_str(),
               echo=lambda line: print(line, flush=True) if lead else None)
    return 0

  try:
    return contract.guarded('brt-train', args.debug, body)
  finally:
    preemption.uninstall()


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
