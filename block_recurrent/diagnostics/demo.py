"""A first run: train a gin-configured model for a few steps on the embedded PG-mini novels, on the CPU.

    python -m block_recurrent.diagnostics.demo --gin_file=gin/experiments/tiny/rec_fixed_skip.gin
        [--task pg_mini_bytes] [--split train] [--batch_size 2] [--steps 300] [--learning_rate 3e-3] [--debug]

The document-sticky batcher gives each batch row one novel, segment after segment; brt-train's own step
(train/step.py train_step, without dropout, with Adam at a constant learning rate) passes the carry (XL
caches and recurrent state) from step to step and resets it where a row starts a new book. It prints the
training loss in bits per byte every 50 steps, which falls as the model learns. No checkpoints, no
evaluation: brt-train does those. Bad input is one line on stderr and exit status 2 (--debug raises).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import optax
from flax import nnx

from block_recurrent import api, ginconf
from block_recurrent.cli import contract
from block_recurrent.errors import ConfigError
from block_recurrent.train import step as step_lib

PROG = 'block_recurrent.diagnostics.demo'


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  ginconf.add_flags(parser)
  parser.add_argument('--task', default='pg_mini_bytes')
  parser.add_argument('--split', default='train')
  parser.add_argument('--batch_size', type=int, default=2)
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)
  return contract.guarded(PROG, args.debug, lambda: _demo(args))


def _demo(args) -> int:
  cfg = ginconf.model_config(args.gin_file, args.gin_param)
  from block_recurrent.data import segments, tasks  # pylint: disable=import-outside-toplevel  (seqio/TensorFlow)
  docs = tasks.documents(args.task, args.split)
  batcher = segments.DocumentBatcher(docs, batch_size=args.batch_size, segment_length=cfg.segment_length,
                                     shuffle_seed=0, num_epochs=None)
  vocab_size = int(max(d.tokens.max() for d in docs if d.tokens.size)) + 1
  if vocab_size > cfg.vocab_size:
    raise ConfigError(f'task {args.task} uses ids up to {vocab_size - 1} but vocab_size is {cfg.vocab_size}: '
                      'include the matching gin/vocab/ file')

  model = api.build_model(config=cfg, seed=0)
  print(f'model: {api.count_params(model):,} parameters, {cfg.total_layers} layers, '
        f'recurrent at {list(cfg.recurrent_indices) or "none"}; data: {args.task} {args.split} '
        f'({len(docs)} documents, {sum(d.tokens.size for d in docs):,} tokens)')
  tx = optax.adam(args.learning_rate)
  state = step_lib.init_state(model, tx, seed=0, batch_size=args.batch_size)
  graphdef = nnx.graphdef(model)
  train_step = jax.jit(lambda s, b: step_lib.train_step(graphdef, tx, optax.constant_schedule(args.learning_rate),
                                                        s, b, dropout=False))
  t0 = time.time()
  nats, num_bytes = 0.0, 0.0
  for step, batch in zip(range(args.steps), batcher):
    state, metrics = train_step(state, {'inputs': batch.inputs, 'targets': batch.targets, 'mask': batch.mask,
                                        'start': batch.start_of_sequence, 'num_bytes': batch.num_bytes})
    nats += float(metrics['nll_sum'])
    num_bytes += float(metrics['bytes'])
    if step % 50 == 0 or step == args.steps - 1:
      print(f'step {step:4d}  {nats / math.log(2) / max(num_bytes, 1):.3f} bits/byte  '
            f'({time.time() - t0:.1f}s)')
      nats, num_bytes = 0.0, 0.0
  print(f'done: {args.steps} segments per row, the state carried across them')
  return 0


if __name__ == '__main__':
  sys.exit(main())
