"""A first run: fit a gin-configured model to a small text for a few steps on the CPU.

Each of the two batch rows streams one half of the text as bytes, segment after segment, with the carry
(XL caches and recurrent state) passed from step to step, as training on books does. It prints the loss
in bits per byte, which falls as the model learns. The real trainer (`brt-train`) is a later issue.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from block_recurrent import api, ginconf

BYTE_OFFSET = 4  # bytes are shifted past the reserved ids (pad, eos, unk, ...), as the reference does


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='block_recurrent.demo', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--text', default=str(pathlib.Path(__file__).resolve().parent.parent / 'README.md'))
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  args = parser.parse_args(argv)
  cfg = ginconf.config_from_flags('demo', args)
  if cfg is None:
    return 2
  if cfg.vocab_size < 256 + BYTE_OFFSET:
    print(f'demo: error: vocab_size {cfg.vocab_size} cannot hold bytes; include gin/vocab/bytes.gin',
          file=sys.stderr)
    return 2

  data = np.frombuffer(pathlib.Path(args.text).read_bytes(), np.uint8).astype(np.int32) + BYTE_OFFSET
  batch, n = 2, cfg.segment_length
  lane = (len(data) // batch) // n * n
  if lane < n:
    print(f'demo: error: {args.text} is shorter than {batch} segments of {n} bytes', file=sys.stderr)
    return 2
  lanes = data[:batch * lane].reshape(batch, lane)

  model = api.build_model(config=cfg, seed=0)
  graphdef, params = nnx.split(model)
  optimizer = optax.adam(args.learning_rate)
  opt_state = optimizer.init(params)
  print(f'model: {api.count_params(model):,} parameters, {cfg.total_layers} layers, '
        f'recurrent at {list(cfg.recurrent_indices) or "none"}; text: {args.text} ({len(data):,} bytes)')

  @jax.jit
  def train_step(params, opt_state, tokens, carry, start):
    def loss_fn(p):
      logits, new_carry = nnx.merge(graphdef, p)(tokens[:, :-1], carry, start)
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)
      return jnp.mean(nll), new_carry
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, carry, loss

  carry = model.init_carry(batch)
  segments = lane // n
  t0 = time.time()
  for step in range(args.steps):
    k = step % max(segments - 1, 1)
    tokens = lanes[:, k * n:(k + 1) * n + 1]
    if tokens.shape[1] < n + 1:  # the last segment of a lane: wrap to a fresh start
      k, tokens = 0, lanes[:, :n + 1]
    start = np.full(batch, k == 0)
    params, opt_state, carry, loss = train_step(params, opt_state, tokens, carry, start)
    if step % 10 == 0 or step == args.steps - 1:
      print(f'step {step:4d}  loss {float(loss) / math.log(2):.3f} bits/byte  ({time.time() - t0:.1f}s)')
  print('done: the state was carried across', args.steps, 'segments')
  return 0


if __name__ == '__main__':
  sys.exit(main())
