"""`brt-info`: parameter counts and analytic training FLOPs of a gin-configured model, in seconds.

Counts come from `nnx.eval_shape` (no weights are materialised) and are cross-checked against the closed
form in flops.py.
"""

from __future__ import annotations

import argparse
import sys

from block_recurrent import api, configs, flops, ginconf
from block_recurrent.cli import contract


MAX_MEMORY = 2 ** 16  # --layer_costs allocates GTrXL's cache: 512 MiB at this many positions


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='brt-info', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--layer_costs', action='store_true',
                      help='per-step FLOPs and state bytes of ReLiT, AReLiT and GTrXL (4 layers, d=128, 4x64 heads)')
  parser.add_argument('--memory', type=int, nargs='+', default=[128, 256, 512], help='GTrXL memories M')
  parser.add_argument('--devices', type=int, default=0,
                      help='plan per-device memory on this many devices, with the gin MeshConfig (gin/mesh/*.gin)')
  parser.add_argument('--batch_size', type=int, default=0, help='rows for --devices (default: DataConfig.batch_size)')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)
  return contract.guarded('brt-info', args.debug, lambda: _info(args))


def _info(args) -> int:
  if args.devices < 0:
    raise configs.ConfigError(f'--devices {args.devices}: give a device count >= 1 (or 0: no memory plan)')
  if args.batch_size < 0:
    raise configs.ConfigError(f'--batch_size {args.batch_size}: give a row count >= 1 (or 0: DataConfig.batch_size)')
  if args.layer_costs:
    if any(m < 1 for m in args.memory):
      raise configs.ConfigError(f'--memory {" ".join(map(str, args.memory))}: every GTrXL memory must be >= 1')
    if any(m > MAX_MEMORY for m in args.memory):  # the key/value cache is allocated: 8 KiB per position
      raise configs.ConfigError(f'--memory {" ".join(map(str, args.memory))}: every GTrXL memory must be at most '
                                f'{MAX_MEMORY} (its key/value cache is allocated, 8 KiB per position)')
    return _layer_costs(args.memory)
  cfg = ginconf.model_config(args.gin_file, args.gin_param)
  if args.devices:
    return _memory_plan(cfg, args)
  total = api.count_params(api.abstract_model(cfg))
  if cfg.sequence_layer != 'attention':
    kinds = [cfg.linear_kind(i) for i in range(cfg.total_layers)]
    print(f'layers: {cfg.total_layers} gated blocks ({", ".join(kinds)}), d={cfg.d_model}, '
          f'heads={cfg.num_heads}x{cfg.head_dim}, mlp={cfg.mlp_dim}, vocab={cfg.vocab_size}')
    print(f'total parameters: {total}')
    print(f'non-embedding parameters: {total - flops.embedding_params(cfg)}')
    print(f'training FLOPs per token: {flops.train_flops_per_token(cfg):.6g}')
    return 0
  analytic = flops.param_count(cfg)
  if total != analytic:
    print(f'brt-info: warning: analytic parameter count {analytic} differs from the model ({total})',
          file=sys.stderr)
  embedding = flops.embedding_params(cfg)
  kinds = [cfg.layer_kind(i) for i in range(cfg.total_layers)]
  print(f'layers: {cfg.total_layers} (recurrent at {list(cfg.recurrent_indices) or "none"}'
        f'{", feedback" if cfg.feedback else ""}), d={cfg.d_model}, heads={cfg.num_heads}x{cfg.head_dim}'
        f'{f" ({cfg.key_heads} key/value)" if cfg.kv_heads is not None else ""}, mlp={cfg.mlp_dim}, vocab={cfg.vocab_size}')
  print(f'segment: {cfg.segment_length} tokens in {cfg.num_blocks} blocks of {cfg.window}'
        + (f'; {cfg.num_states} states, gate {cfg.gate}, wiring {cfg.wiring}' if 'recurrent' in kinds else ''))
  print(f'total parameters: {total}')
  print(f'non-embedding parameters: {total - embedding}')
  print(f'training FLOPs per token: {flops.train_flops_per_token(cfg):.6g}')
  return 0


def _memory_plan(cfg, args) -> int:
  """Per-device bytes of parameters, optimiser state and carry for the bound mesh on --devices."""
  import gin  # pylint: disable=import-outside-toplevel
  from block_recurrent.train import memory_plan  # pylint: disable=import-outside-toplevel
  train_cfg, mesh_cfg = ginconf.bound(configs.TrainConfig), ginconf.bound(configs.MeshConfig)
  batch = args.batch_size
  if not batch:
    try:
      batch = gin.query_parameter('configs.DataConfig.batch_size')
    except ValueError:
      batch = configs.DataConfig.batch_size
  plan = memory_plan.plan(cfg, train_cfg, batch, mesh_cfg, args.devices)
  total = api.count_params(api.abstract_model(cfg))
  print(f'parameters: {total:,} ({train_cfg.optimizer})')
  print(memory_plan.describe(plan, args.devices, batch))
  return 0


def _layer_costs(memories: list[int]) -> int:
  """The relit.md table for our layers: XLA-counted FLOPs of one step of 4 gated blocks, state per env."""
  from block_recurrent.model import costs  # pylint: disable=import-outside-toplevel
  rows = [('AReLiT eta=4, r=2', costs.step_cost('arelit', eta=4, rank=2)),
          ('ReLiT eta=2', costs.step_cost('relit', eta=2))]
  rows += [(f'GTrXL M={m} (key/value cache)', costs.step_cost('gtrxl', memory=m)) for m in memories]
  print('| layer (4 layers, d=128, 4 heads x 64, one env) | FLOPs / step | recurrent state per env |')
  print('|---|---|---|')
  for name, c in rows:
    print(f'| {name} | {c["flops"] / 1e6:.2f} M | {c["state_bytes"] / 1024:.0f} KiB |')
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
