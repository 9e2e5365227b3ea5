"""Compiles the train step ahead of time for a TPU topology and reports its per-device memory, before any
hardware is booked.

    python launch/aot_check.py --gin_file=gin/experiments/paper/rec_fixed_skip.gin \
        --gin_file=gin/size/1.3B.gin --gin_file=gin/task/pg19_bytes.gin --gin_file=gin/mesh/fsdp.gin \
        --topology=v4-32

--topology names a slice (v4-8 .. v4-128, v5e-8 / v5e-16 / v5e-32, v5p-8 .. v5p-64) or a raw
`jax.experimental.topologies` name such as v4:2x2x4; compiling for a TPU needs a TPU-enabled jaxlib
(`pip install 'jax[tpu]'`), and where there is none the check says so and exits 0 (skipped).
--topology=local compiles for this machine's own devices (what the tests run).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault('NO_GCE_CHECK', 'true')

# slice name -> topology name; v4 and v5p slice names count TensorCores (2 per chip), v5e names count chips
SLICES = {
    'v4-8': 'v4:2x2x1', 'v4-16': 'v4:2x2x2', 'v4-32': 'v4:2x2x4', 'v4-64': 'v4:2x4x4', 'v4-128': 'v4:4x4x4',
    'v5p-8': 'v5p:2x2x1', 'v5p-16': 'v5p:2x2x2', 'v5p-32': 'v5p:2x2x4', 'v5p-64': 'v5p:2x4x4',
    'v5e-8': 'v5e:2x4', 'v5e-16': 'v5e:4x4', 'v5e-32': 'v5e:4x8',
}


def topology_devices(name: str):
  """(devices, None) for the topology, or (None, why) when this jaxlib cannot compile for it."""
  import jax  # pylint: disable=import-outside-toplevel
  if name == 'local':
    return jax.devices(), None
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    topology = topologies.get_topology_desc(topology_name=SLICES.get(name, name), platform='tpu')
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return None, first
  return topology.devices, None


def main(argv: list[str] | None = None) -> int:
  from block_recurrent import configs, ginconf  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='aot_check', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--topology', required=True, help=f'local, {", ".join(SLICES)} or a raw topology name')
  args = parser.parse_args(argv)
  try:
    ginconf.parse(args.gin_file, args.gin_param)
    model_cfg, data_cfg = ginconf.bound_model_config(), ginconf.bound_data_config()
    train_cfg, mesh_cfg = ginconf.bound(configs.TrainConfig), ginconf.bound(configs.MeshConfig)
  except configs.ConfigError as e:
    print(f'aot_check: error: {e}', file=sys.stderr)
    return 2
  devices, why = topology_devices(args.topology)
  if devices is None:
    print(f'aot_check: skipped: this jaxlib cannot compile for TPU topology {args.topology} ({why}); '
          "install a TPU-enabled jaxlib (pip install 'jax[tpu]') to run this check")
    return 0
  import jax  # pylint: disable=import-outside-toplevel
  from block_recurrent.train import loop  # pylint: disable=import-outside-toplevel
  try:
    s = loop.setup(model_cfg, data_cfg, train_cfg, mesh_cfg, devices=devices)
  except configs.ConfigError as e:
    print(f'aot_check: error: {e}', file=sys.stderr)
    return 2
  rows, n = data_cfg.batch_size, model_cfg.segment_length
  shapes = {'inputs': ((rows, n), 'int32'), 'targets': ((rows, n), 'int32'), 'mask': ((rows, n), 'bool'),
            'start': ((rows,), 'bool'), 'num_bytes': ((rows,), 'int32')}
  batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=s.batch_sh[k]) for k, (shape, dtype) in shapes.items()}
  compiled = loop.train_program(s, model_cfg).lower(s.target, batch).compile()
  mem = compiled.memory_analysis()
  gib = lambda b: f'{b / 2 ** 30:.3f} GiB'
  mesh = ' x '.join(f'{k}={v}' for k, v in s.mesh.shape.items())
  print(f'compiled the train step for {args.topology} ({len(devices)} devices, {devices[0].platform}; mesh {mesh}, '
        f'batch {rows} x {n} tokens)')
  print(f'per device: arguments {gib(mem.argument_size_in_bytes)}, outputs {gib(mem.output_size_in_bytes)}, '
        f'temporaries {gib(mem.temp_size_in_bytes)}, generated code {mem.generated_code_size_in_bytes / 2 ** 20:.1f} MiB')
  print(f'peak estimate per device (arguments + temporaries; outputs alias the donated state): '
        f'{gib(mem.argument_size_in_bytes + mem.temp_size_in_bytes)}')
  return 0


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  raise SystemExit(main())
