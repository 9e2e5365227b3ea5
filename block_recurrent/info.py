"""`brt-info`: parameter counts and analytic training FLOPs of a gin-configured model, in seconds.

Counts come from `nnx.eval_shape` (no weights are materialised) and are cross-checked against the closed
form in flops.py.
"""

from __future__ import annotations

import argparse
import sys

from block_recurrent import api, flops, ginconf


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='brt-info', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  args = parser.parse_args(argv)
  cfg = ginconf.config_from_flags('brt-info', args)
  if cfg is None:
    return 2
  total = api.count_params(api.abstract_model(cfg))
  analytic = flops.param_count(cfg)
  if total != analytic:
    print(f'brt-info: warning: analytic parameter count {analytic} differs from the model ({total})',
          file=sys.stderr)
  embedding = flops.embedding_params(cfg)
  kinds = [cfg.layer_kind(i) for i in range(cfg.total_layers)]
  print(f'layers: {cfg.total_layers} (recurrent at {list(cfg.recurrent_indices) or "none"}'
        f'{", feedback" if cfg.feedback else ""}), d={cfg.d_model}, heads={cfg.num_heads}x{cfg.head_dim}, '
        f'mlp={cfg.mlp_dim}, vocab={cfg.vocab_size}')
  print(f'segment: {cfg.segment_length} tokens in {cfg.num_blocks} blocks of {cfg.window}'
        + (f'; {cfg.num_states} states, gate {cfg.gate}, wiring {cfg.wiring}' if 'recurrent' in kinds else ''))
  print(f'total parameters: {total}')
  print(f'non-embedding parameters: {total - embedding}')
  print(f'training FLOPs per token: {flops.train_flops_per_token(cfg):.6g}')
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
