"""`brt-train`: gin-configured training (also `python -m block_recurrent.main`).

    brt-train --gin_file=gin/experiments/local_cpu.gin [--gin_param=...] --workdir=DIR [--load_dir=DIR]

gin binds ModelConfig, DataConfig, TrainConfig and MeshConfig; the bindings actually in force are
written to DIR/config.gin. Re-running with the same workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')


def main(argv: list[str] | None = None) -> int:
  import gin  # noqa: F401

  from block_recurrent import configs, ginconf
  parser = argparse.ArgumentParser(prog='brt-train', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--load_dir', default=None, help="start from another run's parameters (fine-tuning)")
  parser.add_argument('--reset_optimizer', action='store_true', help='with --load_dir: fresh optimiser state')
  args = parser.parse_args(argv)
  try:
    ginconf.parse(args.gin_file, args.gin_param)
    model_cfg, data_cfg = ginconf.bound_model_config(), ginconf.bound_data_config()
    train_cfg, mesh_cfg = ginconf.bound(configs.TrainConfig), ginconf.bound(configs.MeshConfig)
    from block_recurrent.train import loop  # heavy imports only once the config is known to be good
    loop.train(model_cfg, data_cfg, train_cfg, mesh_cfg, args.workdir, load_dir=args.load_dir,
               reset_optimizer=args.reset_optimizer, config_text=gin.config_str(),
               echo=lambda line: print(line, flush=True))
  except configs.ConfigError as e:
    print(f'brt-train: error: {e}', file=sys.stderr)
    return 2
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
