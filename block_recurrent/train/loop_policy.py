"""The training loop's arithmetic and decisions, pure (block_recurrent/train/loop.py applies them): the
metrics of a log interval, when to log, evaluate and save, and the non-finite (rollback) policy.
"""

from __future__ import annotations

import math

from block_recurrent import configs

LN2 = math.log(2.0)


def summary(sums: dict) -> dict:
  """Loss, bits per token and byte, perplexity and accuracy of summed token statistics."""
  tokens, nats = max(sums.get('tokens', 0.0), 1.0), sums.get('nll_sum', 0.0)
  return {'loss': nats / tokens, 'bits_per_token': nats / tokens / LN2,
          'bits_per_byte': nats / LN2 / max(sums.get('bytes', 0.0), 1.0),
          'perplexity': math.exp(min(nats / tokens, 50)), 'accuracy': sums.get('correct', 0.0) / tokens}


def accumulate(sums: dict, values: dict) -> dict:
  """The log interval's sums after one more step: the learning rate and gradient norm are the latest, a
  skipped (non-finite) step counts in skipped_steps but adds nothing to the loss, tokens or bytes."""
  out = dict(sums, skipped_steps=sums.get('skipped_steps', 0.0) + values['skipped'],
             learning_rate=values['learning_rate'], grad_norm=values['grad_norm'])
  if not values['skipped']:
    for k in ('nll_sum', 'tokens', 'correct', 'bytes'):
      out[k] = out.get(k, 0.0) + values[k]
  return out


def tokens_per_second(sums: dict, timed_tokens: float, elapsed: float) -> float:
  """timed_tokens corrects sums['tokens'] to the tokens read while the interval was timed: minus the
  compiling first step's, plus the skipped steps' (read and computed, though not counted in the loss)."""
  return (sums.get('tokens', 0.0) + timed_tokens) / max(elapsed, 1e-9)


def train_row(sums: dict, rate: float, flops_per_token: float, peak: float, train_seconds: float) -> dict:
  """The metrics.jsonl row of a log interval; loss, bits and accuracy only if some step was not skipped."""
  row = dict(learning_rate=sums['learning_rate'], tokens_per_s=rate,
             grad_norm=sums['grad_norm'] if math.isfinite(sums['grad_norm']) else None,  # JSON has no NaN
             model_flops_per_token=flops_per_token, mfu=rate * flops_per_token / peak,
             skipped_steps=sums['skipped_steps'], train_seconds=train_seconds)
  if 'tokens' in sums:
    row.update(summary(sums))
  return row


def eta_seconds(elapsed: float, steps_done: int, steps_left: int) -> float:
  return elapsed / max(steps_done, 1) * steps_left


def log_line(done: int, num_steps: int, row: dict, eta: float) -> str:
  if 'loss' not in row:
    return f'step {done:6d}/{num_steps}  every step since the last line skipped (non-finite)'
  return (f'step {done:6d}/{num_steps}  loss {row["loss"]:.3f}  bits/byte {row["bits_per_byte"]:.3f}  '
          f'{row["tokens_per_s"]:,.0f} tokens/s  MFU {100 * row["mfu"]:.1f}%  ETA {eta:.0f}s'
          + (f'  skipped {row["skipped_steps"]:.0f}' if row['skipped_steps'] else ''))


def log_due(done: int, train_cfg: configs.TrainConfig) -> bool:
  return done % max(train_cfg.log_every, 1) == 0 or done == train_cfg.num_steps


def eval_due(done: int, train_cfg: configs.TrainConfig) -> bool:
  """Every eval_every steps, but not at the last: the final evaluation follows the loop."""
  return bool(train_cfg.eval_every) and done % train_cfg.eval_every == 0 and done < train_cfg.num_steps


def over_time(train_seconds: float, max_train_seconds: float) -> bool:
  return bool(max_train_seconds) and train_seconds >= max_train_seconds


def save_due(done: int, train_cfg: configs.TrainConfig, skips_in_row: int, stop: bool) -> tuple[bool, bool]:
  """(save, force): every checkpoint_every steps, at the last and when stopping, but never a step whose
  update was skipped; forced (past Orbax's save interval) at the last step and when stopping."""
  last = done == train_cfg.num_steps
  save = skips_in_row == 0 and (done % max(train_cfg.checkpoint_every, 1) == 0 or last or stop)
  return save, stop or last


def streak_start(done: int, skips_in_row: int) -> int:
  """The first step of the non-finite streak that ends at step done."""
  return done - skips_in_row + 1


def rollback_to(good_steps: list[int], rollbacks_left: int) -> int | None:
  """The checkpoint a non-finite streak rolls back to: the newest good one while rollbacks are left."""
  return max(good_steps, default=None) if rollbacks_left else None


def stopped_message(skips_in_row: int, first_bad: int, done: int, directory, good_steps: list[int]) -> str:
  back = max(good_steps, default=None)
  where = (f'the last good checkpoint is {directory}/{back}' if back is not None
           else 'no good checkpoint was written before it')
  return (f'{skips_in_row} consecutive non-finite steps ({first_bad} to {done}): training stopped at step {done}; '
          f'{where}. Lower TrainConfig.learning_rate, set TrainConfig.grad_clip or TrainConfig.nonfinite_rollbacks, '
          'then rerun to ' + ('resume from it' if back is not None else 'start afresh'))
