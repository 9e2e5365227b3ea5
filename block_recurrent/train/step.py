"""The pure train and eval steps. All IO lives in loop.py; these are jitted once with explicit shardings.

The train state carries the recurrent state and XL caches from step to step (`carry`), with a separate
copy for evaluation (`eval_carry`) so that evaluating never disturbs training.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from block_recurrent.model.carry import ModelCarry

Array = jax.Array


class TrainState(NamedTuple):
  step: Array  # int32 []
  params: Any  # nnx.State of the model's Params
  opt_state: Any
  rng: Array  # uint32 raw key data (checkpointable)
  carry: ModelCarry  # Carry (attention family) or LayerStates (gated family)
  eval_carry: ModelCarry


def token_nll(logits_BxNxV: Array, targets_BxN: Array) -> Array:
  """Each position's negative log-likelihood of its target, in nats, computed in float32: [B, N]. The one
  definition of the loss: the train and eval steps, brt-eval's per-token losses and the diagnostics use it."""
  logp_BxNxV = jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32))
  return -jnp.take_along_axis(logp_BxNxV, targets_BxN[..., None], axis=-1)[..., 0]


def init_state(model, tx: optax.GradientTransformation, seed: int, batch_size: int,
               eval_batch_size: int | None = None) -> TrainState:
  """The state at step 0 of `model` (an nnx model, split later with nnx.split): its parameters, a fresh
  optimiser state, the dropout RNG of `seed` and initial carries of batch_size (and eval_batch_size) rows."""
  params = nnx.state(model)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)), carry=model.init_carry(batch_size),
                    eval_carry=model.init_carry(eval_batch_size or batch_size))


def _token_stats(logits_BxNxV: Array, batch: dict) -> dict:
  nll = token_nll(logits_BxNxV, batch['targets'])
  mask = batch['mask'].astype(jnp.float32)
  correct = (jnp.argmax(logits_BxNxV, -1) == batch['targets']).astype(jnp.float32)
  return {'nll_sum': jnp.sum(nll * mask), 'tokens': jnp.sum(mask), 'correct': jnp.sum(correct * mask),
          'bytes': jnp.sum(batch['num_bytes']).astype(jnp.float32)}


def train_step(graphdef, tx: optax.GradientTransformation, schedule, state: TrainState, batch: dict,
               dropout: bool = True, inject_nonfinite: tuple[int, ...] = ()):
  """One optimisation step on one segment per lane; returns the new state and summed metrics.

  A step whose loss or gradient is not finite is skipped: parameters and optimiser state stay as they
  were (metrics['skipped'] = 1), the step counter still advances (its batch is consumed), and the carry
  moves on unless it too is non-finite. inject_nonfinite: steps (1-based, as logged: the step that
  takes state.step to state.step + 1) whose gradients are made NaN, for fault-injection tests."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

  def loss_fn(params):
    model = nnx.merge(graphdef, params)
    logits, carry = model(batch['inputs'], state.carry, batch['start'], deterministic=not dropout,
                          dropout_key=key if dropout else None)
    stats = _token_stats(logits, batch)
    return stats['nll_sum'] / jnp.maximum(stats['tokens'], 1.0), (carry, stats)

  (loss, (carry, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if inject_nonfinite:
    poison = jnp.where(jnp.isin(state.step + 1, jnp.asarray(inject_nonfinite, jnp.int32)), jnp.nan, 1.0)
    grads = jax.tree.map(lambda g: g * poison, grads)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
  carry_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(carry)
                                    if jnp.issubdtype(x.dtype, jnp.floating)] or [jnp.array(True)]))
  carry = jax.tree.map(lambda n, o: jnp.where(carry_finite, n, o), carry, state.carry)
  metrics = dict(stats, loss=loss, grad_norm=grad_norm, learning_rate=schedule(state.step),
                 skipped=1.0 - finite.astype(jnp.float32))
  return state._replace(step=state.step + 1, params=keep(params, state.params),
                        opt_state=keep(opt_state, state.opt_state), carry=carry), metrics


def eval_step(graphdef, state: TrainState, batch: dict, ablate_state: str = 'none'):
  """Scores one segment per lane with the evaluation carry; parameters and the train carry are untouched.
  ablate_state: lm.ABLATIONS (what the model may carry over; brt-eval --ablate_state)."""
  model = nnx.merge(graphdef, state.params)
  how = {} if ablate_state == 'none' else {'ablate_state': ablate_state}
  logits, eval_carry = model(batch['inputs'], state.eval_carry, batch['start'], **how)
  return state._replace(eval_carry=eval_carry), dict(_token_stats(logits, batch),
                                                     token_nll=token_nll(logits, batch['targets']))


def diagnostics_step(graphdef, state: TrainState, batch: dict) -> dict:
  """The recurrent model's diagnostics (lm.LanguageModel.diagnostics) on one segment per lane, from the
  evaluation carry; nothing is updated."""
  model = nnx.merge(graphdef, state.params)
  return model.diagnostics(batch['inputs'], state.eval_carry, batch['start'])
