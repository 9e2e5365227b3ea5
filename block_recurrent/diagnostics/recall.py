"""Long-range recall: which language model remembers a fact G tokens later, for G up to many windows.

    python -m block_recurrent.diagnostics.recall [--models slide xl rec relit arelit gtrxl] [--steps 1500]
        [--gaps 8 16 32 64 128 256 512 1024] [--out results/recall] [--debug]

Synthetic documents over a 64-token vocabulary: random filler tokens, a few facts `key value` stated
together, and later queries `? key` whose next token is the fact's value. The gap G is the distance from
the value to the position where the model must produce it again. Every model is trained from scratch on
the same stream of one-segment documents (128 tokens, gaps up to ~120), with the loss on the answers only,
and then scored at each gap on longer documents read segment by segment with the carry passed on, as
brt-eval reads a book; training and scoring are brt-train's own steps (train/step.py). Chance is 1 / the
number of values (6.25%). An error is one line on stderr (--debug raises it instead).

The models share a window of W = 16 tokens: Slide (blocks of 16 in segments of 128), XL (segments of
16 with the previous segment cached), Rec:fixed:skip (Slide plus a recurrent layer with 16 states),
ReLiT, AReLiT and GTrXL (M = 32, the attention span of Slide and XL); 3 layers of width 64, 2 heads of
32. Each model's MLP width is chosen so that its non-embedding parameter count is within a few percent of
ReLiT's with an MLP of 128 (the GRU gates of the linear models cost ~50k parameters a layer); the table
prints the counts.
Prints a markdown table and writes OUT.json and OUT.png (matplotlib, the `bench` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
import optax
from flax import nnx

from block_recurrent import configs
from block_recurrent.cli import contract
from block_recurrent.diagnostics import plots
from block_recurrent.model import blocks, factory
from block_recurrent.train import step as step_lib

VOCAB = 64
FILLER = 32  # tokens 0..31
KEYS = np.arange(32, 40)  # 8 keys
VALUES = np.arange(40, 56)  # 16 values: chance is 1/16
QUERY = 56
MODELS = ('slide', 'xl', 'rec', 'relit', 'arelit', 'gtrxl')
WINDOW = 16  # W: every attention model sees at most 2W tokens back
TRAIN_LENGTH = 128  # one segment
PROG = 'block_recurrent.diagnostics.recall'


@dataclasses.dataclass(frozen=True)
class Task:
  facts: int = 2  # facts stated together in each document
  queries: int = 8  # queries per training document


def make_documents(rng: np.random.Generator, rows: int, length: int, task: Task, gap: int | None = None):
  """(tokens [rows, length] int32, answer mask [rows, length] bool, gaps [rows]): mask[t] marks the
  query-key positions whose next token is the answer. With `gap`, each row has one query whose answer
  lies exactly `gap` tokens after its fact's value, the answer at the end of the document; otherwise
  `task.queries` queries at random places after the facts."""
  if gap is not None and gap < 3:
    raise ValueError(f'gaps must be at least 3 (value, "?", key, answer), got {gap}')
  tokens = rng.integers(0, FILLER, (rows, length)).astype(np.int32)
  mask = np.zeros((rows, length), bool)
  gaps = np.zeros((rows,), np.int32)
  for i in range(rows):
    keys = rng.choice(KEYS, task.facts, replace=False)
    values = rng.choice(VALUES, task.facts)
    if gap is None:
      start = rng.integers(0, length // 4)
    else:  # the fact queried: any whose statement ends before the query at the end of the document
      asked = rng.integers(max(0, task.facts - (gap - 1) // 2), task.facts)
      start = length - 1 - gap - (2 * asked + 1)  # its value lies `gap` tokens before the answer
      if start < 0:
        raise ValueError(f'a gap of {gap} needs documents longer than {length} tokens')
    tokens[i, start:start + 2 * task.facts:2] = keys
    tokens[i, start + 1:start + 2 * task.facts:2] = values
    if gap is None:
      first = start + 2 * task.facts
      slots = rng.choice(np.arange(first, length - 2, 3), task.queries, replace=False)
    else:
      slots = np.array([length - 3])
    for slot in slots:
      j = rng.integers(task.facts) if gap is None else asked
      tokens[i, slot:slot + 3] = (QUERY, keys[j], values[j])
      mask[i, slot + 1] = True
      gaps[i] = slot + 2 - (start + 2 * j + 1)
  return tokens, mask, gaps


def base_config(kind: str, mlp_dim: int) -> configs.ModelConfig:
  common = dict(vocab_size=VOCAB, num_layers=3, d_model=64, num_heads=2, head_dim=32, mlp_dim=mlp_dim,
                window=WINDOW, segment_length=TRAIN_LENGTH, dropout_rate=0.0, num_states=WINDOW,
                relative_max_distance=128)
  if kind == 'slide':
    return configs.ModelConfig(**common)
  if kind == 'xl':
    return configs.ModelConfig(**dict(common, segment_length=WINDOW))
  if kind == 'rec':
    return configs.ModelConfig(**common, recurrent_layers=(1,), gate='fixed', wiring='skip')
  if kind in ('relit', 'arelit', 'gtrxl'):
    return configs.ModelConfig(**common, sequence_layer=kind, gtrxl_memory=2 * WINDOW)
  raise configs.ConfigError(f'unknown model {kind!r}: choose from {", ".join(MODELS)}')


def non_embedding_params(cfg: configs.ModelConfig) -> int:
  model = nnx.eval_shape(lambda: factory.build(cfg, nnx.Rngs(params=0)))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return total - cfg.vocab_size * cfg.d_model


def matched_config(kind: str, target: int) -> configs.ModelConfig:
  """The model's config with the MLP width (a multiple of 8) that brings it closest to `target`."""
  low, high = non_embedding_params(base_config(kind, 8)), non_embedding_params(base_config(kind, 16))
  per_unit = (high - low) / 8  # the count is linear in the width
  mlp = max(8, 8 * round((8 + (target - low) / per_unit) / 8))
  return base_config(kind, mlp)


class Document(nnx.Module):
  """A model that reads whole documents [B, T]: one segment call after another (model/blocks.py's scan over
  the segments), the carry passed on, as brt-eval reads a book. train_step and eval_step see one call."""

  def __init__(self, model):
    self.model = model

  def init_carry(self, batch_size: int):
    return self.model.init_carry(batch_size)

  def __call__(self, tokens_BxT, carry, start_B, *, deterministic: bool = True, dropout_key=None):
    def segment(carry, tokens_BxN, index):
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
      logits, carry = self.model(tokens_BxN, carry, start_B & (index == 0), deterministic=deterministic,
                                 dropout_key=key)
      return carry, logits

    tokens_SxBxN = blocks.split_blocks(tokens_BxT, self.model.config.segment_length)
    carry, logits_SxBxNxV = blocks.scan(segment, carry, tokens_SxBxN)
    return blocks.merge_blocks(logits_SxBxNxV), carry


def next_token_batch(tokens_BxT: np.ndarray, mask_BxT: np.ndarray) -> dict:
  """The step's batch for documents whose answers follow the positions `mask` marks: each position's target
  is the next token, scored only where the mask says (the last position has none)."""
  rows = tokens_BxT.shape[0]
  targets = np.concatenate([tokens_BxT[:, 1:], np.zeros((rows, 1), tokens_BxT.dtype)], axis=1)
  mask = np.concatenate([mask_BxT[:, :-1], np.zeros((rows, 1), bool)], axis=1)
  return {'inputs': tokens_BxT, 'targets': targets, 'mask': mask, 'start': np.ones((rows,), bool),
          'num_bytes': np.zeros((rows,), np.int32)}


class Trainer:
  """One model, trained and scored by brt-train's own steps (train/step.py) on whole documents: one-segment
  documents to train on, longer ones to score, read segment by segment with the carry passed on."""

  def __init__(self, cfg: configs.ModelConfig, learning_rate: float, steps: int, seed: int):
    self.cfg = cfg
    model = Document(factory.build(cfg, nnx.Rngs(params=seed)))
    self.graphdef = nnx.graphdef(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, min(100, steps // 10 + 1), steps)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    self.state = step_lib.init_state(model, tx, seed, batch_size=1)
    self._init_carry = model.init_carry
    self._step = jax.jit(lambda s, b: step_lib.train_step(self.graphdef, tx, schedule, s, b, dropout=False))
    self._score = jax.jit(lambda s, b: step_lib.eval_step(self.graphdef, s, b)[1]['correct'])

  def train(self, rng, steps: int, batch: int, task: Task, echo=None) -> list[float]:
    losses = []
    t0 = time.perf_counter()
    for i in range(steps):
      tokens, mask, _ = make_documents(rng, batch, TRAIN_LENGTH, task)
      self.state, metrics = self._step(self.state._replace(carry=self._init_carry(batch)),
                                       next_token_batch(tokens, mask))
      losses.append(float(metrics['loss']))
      if echo and (i + 1) % max(steps // 5, 1) == 0:
        echo(f'  step {i + 1}/{steps}: answer loss {np.mean(losses[-50:]):.3f} ({time.perf_counter() - t0:.0f}s)')
    return losses

  def accuracy(self, rng, gap: int, examples: int, length: int, task: Task, batch: int = 64) -> float:
    right = 0
    for _ in range(examples // batch):
      tokens, mask, _ = make_documents(rng, batch, length, task, gap=gap)
      right += int(self._score(self.state._replace(eval_carry=self._init_carry(batch)), next_token_batch(tokens, mask)))
    return right / (examples // batch * batch)


def eval_length(max_gap: int, task: Task) -> int:
  """One document length for every gap (one compilation): enough for the largest, in whole segments."""
  need = max_gap + 2 * task.facts + 2
  return -(-need // TRAIN_LENGTH) * TRAIN_LENGTH


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
  parser.add_argument('--models', nargs='+', default=list(MODELS), choices=MODELS)
  parser.add_argument('--gaps', type=int, nargs='+', default=[8, 16, 32, 64, 128, 256, 512, 1024])
  parser.add_argument('--steps', type=int, default=1500, help='training steps per model')
  parser.add_argument('--batch', type=int, default=16, help=f'documents of {TRAIN_LENGTH} tokens per step')
  parser.add_argument('--learning_rate', type=float, default=3e-3)
  parser.add_argument('--examples', type=int, default=256, help='scored queries per gap')
  parser.add_argument('--facts', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default='results/recall')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)
  if min(args.gaps) < 3:
    parser.error(f'--gaps must be at least 3 (value, "?", key, answer), got {min(args.gaps)}')
  if not 1 <= args.facts <= len(KEYS):
    parser.error(f'--facts must lie in [1, {len(KEYS)}], got {args.facts}')
  return contract.guarded(PROG, args.debug, lambda: _run(args))


def _run(args) -> int:
  """Trains and scores each model, prints the table and writes OUT.json and OUT.png."""
  task = Task(facts=args.facts)
  target = non_embedding_params(base_config('relit', 128))
  length = eval_length(max(args.gaps), task)
  rows = []
  for kind in args.models:
    cfg = matched_config(kind, target)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, args.learning_rate, args.steps, args.seed)
    print(f'{kind}: training ({non_embedding_params(cfg):,} non-embedding parameters, MLP {cfg.mlp_dim})', flush=True)
    losses = trainer.train(np.random.default_rng(args.seed), args.steps, args.batch, task,
                           echo=lambda line: print(line, flush=True))
    train_s = time.perf_counter() - t0
    eval_rng = np.random.default_rng(args.seed + 1)  # the same test documents for every model
    acc = {g: trainer.accuracy(eval_rng, g, args.examples, length, task) for g in args.gaps}
    row = {'model': kind, 'params': non_embedding_params(cfg), 'mlp_dim': cfg.mlp_dim,
           'final_loss': float(np.mean(losses[-50:])), 'train_seconds': train_s,
           'eval_seconds': time.perf_counter() - t0 - train_s, 'accuracy': acc}
    rows.append(row)
    print(f'{kind}: {row["params"]:,} non-embedding params, loss {row["final_loss"]:.3f}, '
          f'{train_s:.0f}s training; ' + ' '.join(f'G={g}:{100 * a:.0f}%' for g, a in acc.items()), flush=True)
  print(f'\nRecall accuracy per gap (window {WINDOW}, trained on {TRAIN_LENGTH}-token documents, {args.steps} steps of '
        f'{args.batch}; chance {100 / len(VALUES):.2f}%; {args.examples} queries per gap)')
  print('| model | non-embedding params | ' + ' | '.join(f'G={g}' for g in args.gaps) + ' |')
  print('|---|---|' + '---|' * len(args.gaps))
  for row in rows:
    print(f'| {row["model"]} | {row["params"]:,} | '
          + ' | '.join(f'{100 * row["accuracy"][g]:.0f}%' for g in args.gaps) + ' |')
  def draw(ax):
    for row in rows:
      ax.plot(args.gaps, [100 * row['accuracy'][g] for g in args.gaps], marker='o', label=row['model'])
    ax.axhline(100 / len(VALUES), color='gray', linestyle=':', label='chance')
    ax.axvline(2 * WINDOW, color='gray', linestyle='--', linewidth=0.8, label='attention span (2W)')
    ax.set_xscale('log', base=2)
    ax.set_xlabel('gap G (tokens)')
    ax.set_ylabel('recall accuracy (%)')
    ax.set_title('Long-range recall')
    ax.legend(fontsize=7)

  plots.save(args.out, rows, draw, figsize=(6, 3.8))
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
