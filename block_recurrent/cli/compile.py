"""`brt-compile`: compiles a step ahead of time for a TPU slice (XLA's real TPU compiler, no TPU needed) or
for this machine, and says whether it fits, before any hardware is booked.

    brt-compile --gin_file=gin/experiments/paper/rec_fixed_skip.gin --gin_file=gin/task/pg19_tokens.gin \
        --topology=v4-32 [--step=train|eval|generate] [--gin_param=...]

It prints the devices, the mesh, per-device arguments, outputs and temporaries, XLA's FLOPs per step beside
the analytic count, the compile time, and last `peak per device: X GiB of Y GiB HBM: fits`. A step that does
not fit is one line, `brt-compile: error: does not fit: ...; try ...`, and exit status 2. Compiling for a
TPU needs libtpu (`pip install -e '.[tpu]'`); `--topology=local` compiles for this machine's devices.
Slice names count TensorCores for v4 and v5p (megacore: one JAX device per chip, chips = cores / 2) and
chips for v5e and v6e, as Cloud TPU names them.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')

from block_recurrent.cli import contract  # noqa: E402  pylint: disable=wrong-import-position


def main(argv: list[str] | None = None) -> int:
  from block_recurrent.train import aot  # pylint: disable=import-outside-toplevel
  from block_recurrent import configs, ginconf  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='brt-compile', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--topology', required=True, help=f'local or a TPU slice: {", ".join(aot.SLICES)}')
  parser.add_argument('--step', default='train', choices=aot.STEPS, help='which program to compile')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    ginconf.parse(args.gin_file, args.gin_param)
    model_cfg, data_cfg, train_cfg, mesh_cfg = ginconf.bound_configs()
    report = aot.compile_step(model_cfg, data_cfg, train_cfg, mesh_cfg, args.topology, args.step)
    lines = aot.describe(report, model_cfg)
    for line in lines[:-1]:
      print(line)
    if not report.fits:
      raise configs.ConfigError(f'does not fit: peak per device {report.peak / aot.GIB:.2f} GiB > {report.hbm_gib:.2f} '
                                f'GiB HBM on {report.topology}; try {aot._hints(model_cfg, mesh_cfg, args.step)}')
    print(lines[-1])
    return 0

  return contract.guarded('brt-compile', args.debug, body)


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
