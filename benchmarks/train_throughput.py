"""Training throughput of Rec:fixed:skip, Slide:13L and XL with a 4x window, side by side in one run.

    .venv/bin/python benchmarks/train_throughput.py [--rounds 5 --steps 5 --batch 4]

Each round times `--steps` training steps (forward, backward, Adafactor update) of every model in turn,
so that the machine's load hits all of them alike; ratios are taken within a round. The paper's target:
Rec step time within 1.15x of Slide:13L and at most 0.6x of the 4x-window XL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from block_recurrent import api, flops, ginconf
from block_recurrent.train import loop

MODELS = {
    'Rec:fixed:skip': 'gin/experiments/small/rec_fixed_skip.gin',
    'Slide:13L': 'gin/experiments/small/slide13.gin',
    'XL (4x window)': 'gin/experiments/small/xl_4x.gin',
}


def make_step(cfg, batch):
  model = api.build_model(config=cfg, seed=0)
  graphdef, params = nnx.split(model)
  optimizer = optax.adafactor(1e-2, decay_rate=0.8, momentum=0.9, multiply_by_parameter_scale=True)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, tokens, carry):
    def loss_fn(p):
      logits, new_carry = nnx.merge(graphdef, p)(tokens, carry, jnp.zeros(batch, bool))
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)
      return jnp.mean(nll), new_carry
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, carry, loss

  state = [params, opt_state, model.init_carry(batch)]
  tokens = np.random.default_rng(0).integers(4, 260, (batch, cfg.segment_length)).astype(np.int32)

  def run(steps):
    for _ in range(steps):
      state[0], state[1], state[2], loss = step(state[0], state[1], tokens, state[2])
    jax.block_until_ready(loss)

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--gin_param', action='append', default=[])
  args = parser.parse_args()

  runners, tokens_per_step, flops_per_token = {}, {}, {}
  for name, path in MODELS.items():
    cfg = ginconf.model_config([path], ['configs.ModelConfig.dropout_rate = 0.0', *args.gin_param])
    runners[name] = make_step(cfg, args.batch)
    tokens_per_step[name] = args.batch * cfg.segment_length
    flops_per_token[name] = flops.train_flops_per_token(cfg)
    t0 = time.perf_counter()
    runners[name](1)  # compile
    first = time.perf_counter() - t0
    runners[name](1)  # warm up
    print(f'{name:15s} {path}: d={cfg.d_model} L={cfg.total_layers} N={cfg.segment_length} '
          f'W={cfg.window} S={cfg.num_states if cfg.recurrent_layers else "-"} '
          f'(time to first step, compilation included: {first:.1f}s)')

  times, peaks = {name: [] for name in MODELS}, []
  for _ in range(args.rounds):
    peaks.append(loop.matmul_peak_flops())  # the MFU denominator, re-measured beside every round
    for name, run in runners.items():
      t0 = time.perf_counter()
      run(args.steps)
      times[name].append((time.perf_counter() - t0) / args.steps)

  print(f'\nload average after: {os.getloadavg()[0]:.2f}; {args.rounds} rounds x {args.steps} steps, '
        f'batch {args.batch}, jax {jax.__version__} on {jax.devices()[0].platform}')
  print(f'matmul peak (2048^2 f32) GFLOP/s: min {min(peaks) / 1e9:.1f} median {statistics.median(peaks) / 1e9:.1f} '
        f'max {max(peaks) / 1e9:.1f}')
  print(f'{"model":15s} {"tokens/s min":>12s} {"median":>8s} {"max":>8s}   step ms (median)  GFLOP/s (median)'
        f'  MFU min / median / max')
  for name, ts in times.items():
    tps = sorted(tokens_per_step[name] / t for t in ts)
    mfu = sorted(tokens_per_step[name] / t * flops_per_token[name] / p for t, p in zip(ts, peaks))
    print(f'{name:15s} {tps[0]:12.0f} {statistics.median(tps):8.0f} {tps[-1]:8.0f}   '
          f'{1000 * statistics.median(ts):8.1f}  {statistics.median(tps) * flops_per_token[name] / 1e9:8.1f}'
          f'          {100 * mfu[0]:.1f}% / {100 * statistics.median(mfu):.1f}% / {100 * mfu[-1]:.1f}%')
  rec = times['Rec:fixed:skip']
  for other, target in (('Slide:13L', '<= 1.15'), ('XL (4x window)', '<= 0.6')):
    ratios = sorted(r / o for r, o in zip(rec, times[other]))
    print(f'step time Rec / {other}: min {ratios[0]:.3f} median {statistics.median(ratios):.3f} '
          f'max {ratios[-1]:.3f}  (paper target {target})')


if __name__ == '__main__':
  main()
