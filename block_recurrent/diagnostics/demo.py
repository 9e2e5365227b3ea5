"""A first run: train a gin-configured model for a few steps on the embedded PG-mini novels, on the CPU.

The document-sticky batcher gives each batch row one novel, segment after segment; the carry (XL caches
and recurrent state) is passed from step to step and reset where a row starts a new book, as training on
books does. It prints the loss in bits per byte, which falls as the model learns. The real trainer
(`brt-train`, with checkpoints and evaluation) is a later issue.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from block_recurrent import api, ginconf
from block_recurrent.configs import ConfigError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='block_recurrent.diagnostics.demo', description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--task', default='pg_mini_bytes')
  parser.add_argument('--split', default='train')
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  args = parser.parse_args(argv)
  cfg = ginconf.config_from_flags('demo', args)
  if cfg is None:
    return 2
  from block_recurrent.data import segments, tasks  # seqio/TensorFlow: only when the command runs
  try:
    docs = tasks.documents(args.task, args.split)
    batcher = segments.DocumentBatcher(docs, batch_size=args.batch_size, segment_length=cfg.segment_length,
                                       shuffle_seed=0, num_epochs=None)
    vocab_size = int(max(d.tokens.max() for d in docs if d.tokens.size)) + 1
    if vocab_size > cfg.vocab_size:
      raise ConfigError(f'task {args.task} uses ids up to {vocab_size - 1} but vocab_size is {cfg.vocab_size}: '
                        'include the matching gin/vocab/ file')
  except ConfigError as e:
    print(f'demo: error: {e}', file=sys.stderr)
    return 2

  model = api.build_model(config=cfg, seed=0)
  graphdef, params = nnx.split(model)
  optimizer = optax.adam(args.learning_rate)
  opt_state = optimizer.init(params)
  print(f'model: {api.count_params(model):,} parameters, {cfg.total_layers} layers, '
        f'recurrent at {list(cfg.recurrent_indices) or "none"}; data: {args.task} {args.split} '
        f'({len(docs)} documents, {sum(d.tokens.size for d in docs):,} tokens)')

  @jax.jit
  def train_step(params, opt_state, batch, carry):
    def loss_fn(p):
      logits, new_carry = nnx.merge(graphdef, p)(batch['inputs'], carry, batch['start'])
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch['targets'][..., None], -1)[..., 0]
      total = jnp.sum(nll * batch['mask'])
      return total / jnp.maximum(jnp.sum(batch['mask']), 1), (new_carry, total)
    (_, (carry, total)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, carry, total

  carry = model.init_carry(args.batch_size)
  t0 = time.time()
  nats, num_bytes = 0.0, 0
  for step, batch in zip(range(args.steps), batcher):
    arrays = {'inputs': batch.inputs, 'targets': batch.targets, 'mask': batch.mask,
              'start': batch.start_of_sequence}
    params, opt_state, carry, total = train_step(params, opt_state, arrays, carry)
    nats += float(total)
    num_bytes += int(batch.num_bytes.sum())
    if step % 50 == 0 or step == args.steps - 1:
      print(f'step {step:4d}  {nats / math.log(2) / max(num_bytes, 1):.3f} bits/byte  '
            f'({time.time() - t0:.1f}s)')
      nats, num_bytes = 0.0, 0
  print(f'done: {args.steps} segments per row, the state carried across them')
  return 0


if __name__ == '__main__':
  sys.exit(main())
