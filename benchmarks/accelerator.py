"""Training speed on whatever accelerator is present (TPU or GPU): tokens/s, step time and MFU against the
device's stated bf16 peak (block_recurrent/peak.py), for the small and 150M Rec:fixed:skip and Slide:13L,
in bfloat16, side by side in one run (interleaved rounds; min / median / max).

    .venv/bin/python benchmarks/accelerator.py [--rounds 5 --steps 5] [--cpu]

Install the accelerator's jax first (`pip install -e '.[cuda]'` on a GPU host, `'.[tpu]'` on a TPU VM).
Without an accelerator it says so and exits 2; `--cpu` runs the two small models on the CPU instead (a
check of the script, not a measurement anyone should quote). Writes results/accelerator.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time

import common  # first: puts the checkout on sys.path
import jax

from block_recurrent import flops, ginconf, peak
from train_throughput import make_runner

MODELS = {  # name: (gin file, rows per step)
    'small Rec:fixed:skip': ('gin/experiments/small/rec_fixed_skip.gin', 16),
    'small Slide:13L': ('gin/experiments/small/slide13.gin', 16),
    '150M Rec:fixed:skip': ('gin/experiments/paper/rec_fixed_skip.gin', 4),
    '150M Slide:13L': ('gin/experiments/paper/slide13.gin', 4),
}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=5, help='steps per model per round')
  parser.add_argument('--cpu', action='store_true', help='no accelerator: run the small models on the CPU')
  args = parser.parse_args()
  device = jax.devices()[0]
  if device.platform == 'cpu' and not args.cpu:
    print(f'accelerator.py: error: no accelerator here (jax devices: {device.platform}); run it on a TPU or GPU '
          'host, or pass --cpu to check the script on the CPU', flush=True)
    return 2
  names = [n for n in MODELS if not (args.cpu and n.startswith('150M'))]
  peak_flops, how = peak.peak_flops(device.device_kind, device.platform)
  runners, tokens, per_token = {}, {}, {}
  for name in names:
    path, rows = MODELS[name]
    cfg = ginconf.model_config([path], ['configs.ModelConfig.dropout_rate = 0.0',
                                        "configs.ModelConfig.dtype = 'bfloat16'"])
    runners[name] = make_runner(cfg, rows)
    tokens[name], per_token[name] = rows * cfg.segment_length, flops.train_flops_per_token(cfg)
    t0 = time.perf_counter()
    runners[name](1)
    print(f'{name}: {path}, {rows} x {cfg.segment_length} tokens, first step {time.perf_counter() - t0:.1f}s',
          flush=True)
  times = {name: [] for name in names}
  for _ in range(args.rounds):
    for name in names:
      t0 = time.perf_counter()
      runners[name](args.steps)
      times[name].append((time.perf_counter() - t0) / args.steps)
  lines = [f'{device.device_kind} ({len(jax.devices())} devices, one used); MFU against {peak_flops / 1e9:,.0f} '
           f'GFLOP/s ({how})', '', common.table(
               ['model', 'tokens/s (min / median / max)', 'step ms', 'MFU'],
               [[name, common.spread(sorted(tokens[name] / t for t in ts), '{:,.0f}'),
                 common.spread(sorted(1e3 * t for t in ts), '{:.1f}'),
                 common.spread(sorted(100 * tokens[name] / t * per_token[name] / peak_flops for t in ts), '{:.1f}%')]
                for name, ts in times.items()])]
  text = '\n'.join(lines)
  print(text)
  common.RESULTS.mkdir(exist_ok=True)
  (common.RESULTS / 'accelerator.md').write_text(f'{common.machine()}\n\n{text}\n')
  (common.RESULTS / 'accelerator.json').write_text(json.dumps(
      {'device': device.device_kind, 'peak_flops': peak_flops, 'step_s': times, 'tokens_per_step': tokens}, indent=1))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
