"""Training memory and time of ReLiT's forms: the reference's per-step scan against the chunked form.

    .venv/bin/python benchmarks/relit_memory.py [--length 128 --batch 8 --rounds 5]

relit.md's paper size (d = 128, 4 heads of 64, eta = 2, separable gating). For each form the gradient
of a loss over one sequence layer is compiled once; XLA's memory analysis gives the temporary bytes of
the compiled program (what the backward pass keeps: the reference stores the [Dh, eta Dh] state of every
position), and `--rounds` timed runs give min / median / max. The forms compute the same thing (tested
in tests/model/test_linear_recurrent.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from block_recurrent.model import linear_recurrent as linrec

FORMS = ('step', 'parallel', 'chunked')  # step: the reference's sequential scan


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--length', type=int, default=128)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--chunk', type=int, default=16)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args(argv)
  d, heads, head_dim, eta = 128, 4, 64, 2
  layer = linrec.ReLiT(d, heads, head_dim, eta, nnx.Rngs(0), gating='separable', chunk=args.chunk)
  graphdef, params = nnx.split(layer)
  x = jax.random.normal(jax.random.key(1), (args.batch, args.length, d))
  reset = jnp.zeros((args.batch, args.length), bool).at[:, 0].set(True)
  state = layer.init_state(args.batch)
  print(f'ReLiT separable, d={d}, {heads} heads of {head_dim}, eta={eta}, T={args.length}, batch {args.batch}, '
        f'chunk {args.chunk}: gradient of one layer')
  print('| form | temporaries (XLA) | step time min / median / max |')
  print('|---|---|---|')
  rows = {}
  for form in FORMS:
    def loss(p, form=form):
      y, _ = nnx.merge(graphdef, p)(x, state, reset, form=form)
      return jnp.mean(y ** 2)

    grad = jax.jit(jax.grad(loss)).lower(params).compile()
    temp = grad.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(grad(params))
    times = []
    for _ in range(args.rounds):
      t0 = time.perf_counter()
      jax.block_until_ready(grad(params))
      times.append(time.perf_counter() - t0)
    rows[form] = (temp, times)
    print(f'| {form} | {temp / 2 ** 20:,.1f} MiB | {1e3 * min(times):.1f} / {1e3 * statistics.median(times):.1f} / '
          f'{1e3 * max(times):.1f} ms |', flush=True)
  step_temp, step_times = rows['step']
  chunk_temp, chunk_times = rows['chunked']
  print(f'chunked / step: temporaries {chunk_temp / step_temp:.3f}, median time '
        f'{statistics.median(chunk_times) / statistics.median(step_times):.3f}')
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
