"""The training loop's arithmetic and decisions (block_recurrent/train/loop_policy.py), without training: what
a log interval sums and reports, when the loop logs, evaluates and saves, and the non-finite policy."""

import math
import time

import pytest

from block_recurrent import configs
from block_recurrent.train import loop_policy as policy


def _step(loss_nats=2.0, tokens=10.0, skipped=0.0, lr=1e-3, grad_norm=0.5, correct=4.0, num_bytes=12.0):
  return {'nll_sum': loss_nats * tokens, 'tokens': tokens, 'correct': correct, 'bytes': num_bytes,
          'skipped': skipped, 'learning_rate': lr, 'grad_norm': grad_norm, 'loss': loss_nats}


# --- logging arithmetic -----------------------------------------------------------------------------------------

def test_summary_turns_nats_into_bits_per_token_and_byte():
  out = policy.summary({'nll_sum': 20.0, 'tokens': 10.0, 'bytes': 40.0, 'correct': 5.0})
  assert out['loss'] == pytest.approx(2.0)
  assert out['bits_per_token'] == pytest.approx(2.0 / math.log(2.0))
  assert out['bits_per_byte'] == pytest.approx(20.0 / math.log(2.0) / 40.0)
  assert out['perplexity'] == pytest.approx(math.exp(2.0))
  assert out['accuracy'] == pytest.approx(0.5)


def test_summary_of_nothing_divides_by_one_and_caps_the_perplexity():
  assert policy.summary({}) == {'loss': 0.0, 'bits_per_token': 0.0, 'bits_per_byte': 0.0, 'perplexity': 1.0,
                                'accuracy': 0.0}
  assert policy.summary({'nll_sum': 1e6, 'tokens': 1.0})['perplexity'] == pytest.approx(math.exp(50))


def test_accumulate_sums_finite_steps_and_keeps_the_latest_rate_and_norm():
  sums = policy.accumulate({}, _step(loss_nats=2.0, lr=1e-3, grad_norm=0.5))
  sums = policy.accumulate(sums, _step(loss_nats=4.0, lr=2e-3, grad_norm=0.25))
  assert sums['nll_sum'] == 60.0 and sums['tokens'] == 20.0 and sums['correct'] == 8.0 and sums['bytes'] == 24.0
  assert sums['learning_rate'] == 2e-3 and sums['grad_norm'] == 0.25 and sums['skipped_steps'] == 0.0


def test_a_skipped_step_counts_only_as_skipped():
  before = policy.accumulate({}, _step())
  after = policy.accumulate(before, _step(loss_nats=float('nan'), skipped=1.0, grad_norm=float('inf')))
  assert after['skipped_steps'] == 1.0
  assert {k: after[k] for k in ('nll_sum', 'tokens', 'correct', 'bytes')} == \
      {k: before[k] for k in ('nll_sum', 'tokens', 'correct', 'bytes')}
  assert math.isinf(after['grad_norm'])
  assert before['skipped_steps'] == 0.0  # the sums given are not changed in place
  only_skipped = policy.accumulate({}, _step(skipped=1.0))
  assert 'tokens' not in only_skipped and only_skipped['skipped_steps'] == 1.0


def test_tokens_per_second_corrects_for_the_untimed_and_the_skipped_tokens():
  assert policy.tokens_per_second({'tokens': 100.0}, -20.0, 2.0) == pytest.approx(40.0)
  assert policy.tokens_per_second({}, 30.0, 3.0) == pytest.approx(10.0)  # every step skipped
  assert policy.tokens_per_second({'tokens': 1.0}, 0.0, 0.0) == pytest.approx(1e9)  # no division by zero


def test_evaluation_and_saving_time_stay_out_of_the_interval_rate_and_evaluation_out_of_the_clock():
  # The loop wraps a midway evaluation in both, a checkpoint save in _untimed: the next log interval's
  # tokens/s counts only training (a save used to show as a dip in the interval after it).
  from block_recurrent.train import loop  # pylint: disable=import-outside-toplevel
  progress, clock = loop._Progress(step=0, first_step=0, rollbacks_left=0, last_saved=0), loop._TrainClock()
  clock.start()
  progress.t_log = time.perf_counter()
  with clock.paused(), loop._untimed(progress):
    time.sleep(0.3)
  assert time.perf_counter() - progress.t_log < 0.1
  assert clock.seconds() < 0.1
  with loop._untimed(progress):
    time.sleep(0.3)
  assert time.perf_counter() - progress.t_log < 0.1
  assert clock.seconds() >= 0.3


def test_train_row_has_mfu_and_the_loss_only_when_some_step_counted():
  sums = policy.accumulate({}, _step(loss_nats=2.0, grad_norm=float('nan')))
  row = policy.train_row(sums, rate=100.0, flops_per_token=6.0, peak=1200.0, train_seconds=7.0)
  assert list(row)[:7] == ['learning_rate', 'tokens_per_s', 'grad_norm', 'model_flops_per_token', 'mfu',
                           'skipped_steps', 'train_seconds']
  assert row['mfu'] == pytest.approx(0.5) and row['grad_norm'] is None  # JSON has no NaN
  assert row['loss'] == pytest.approx(2.0) and row['train_seconds'] == 7.0
  skipped = policy.train_row(policy.accumulate({}, _step(skipped=1.0)), 10.0, 6.0, 1200.0, 1.0)
  assert 'loss' not in skipped and skipped['skipped_steps'] == 1.0 and skipped['grad_norm'] == 0.5


def test_log_line_says_loss_rate_mfu_eta_and_skips():
  row = policy.train_row(policy.accumulate({}, _step(loss_nats=2.0)), 12345.6, 6.0, 1e6, 1.0)
  line = policy.log_line(7, 100, row, eta=42.4)
  assert line.startswith('step      7/100  loss 2.000  bits/byte ')
  assert '12,346 tokens/s  MFU 7.4%  ETA 42s' in line and 'skipped' not in line
  row['skipped_steps'] = 3.0
  assert policy.log_line(7, 100, row, eta=1.0).endswith('  skipped 3')
  empty = policy.train_row(policy.accumulate({}, _step(skipped=1.0)), 1.0, 6.0, 1e6, 1.0)
  assert policy.log_line(8, 100, empty, 1.0) == 'step      8/100  every step since the last line skipped (non-finite)'


def test_eta_is_the_time_per_step_so_far_times_the_steps_left():
  assert policy.eta_seconds(10.0, 5, 20) == pytest.approx(40.0)
  assert policy.eta_seconds(3.0, 0, 4) == pytest.approx(12.0)  # right after a resume: no division by zero


# --- decisions ------------------------------------------------------------------------------------------------

def test_log_due_every_log_every_steps_and_at_the_last():
  cfg = configs.TrainConfig(num_steps=10, log_every=4)
  assert [d for d in range(1, 11) if policy.log_due(d, cfg)] == [4, 8, 10]
  assert [d for d in range(1, 4) if policy.log_due(d, configs.TrainConfig(num_steps=3, log_every=0))] == [1, 2, 3]


def test_eval_due_every_eval_every_steps_but_never_at_the_last():
  cfg = configs.TrainConfig(num_steps=9, eval_every=3)
  assert [d for d in range(1, 10) if policy.eval_due(d, cfg)] == [3, 6]  # the final evaluation covers 9
  assert not any(policy.eval_due(d, configs.TrainConfig(num_steps=9, eval_every=0)) for d in range(1, 10))


def test_over_time_only_with_a_limit():
  assert not policy.over_time(1e9, 0)
  assert not policy.over_time(9.9, 10) and policy.over_time(10.0, 10)


def test_save_due_on_the_interval_at_the_last_and_on_a_stop_never_after_a_skip():
  cfg = configs.TrainConfig(num_steps=10, checkpoint_every=4)
  assert [d for d in range(1, 11) if policy.save_due(d, cfg, 0, False)[0]] == [4, 8, 10]
  assert policy.save_due(4, cfg, 0, False) == (True, False)  # on the interval: Orbax's own schedule
  assert policy.save_due(10, cfg, 0, False) == (True, True)  # the last step: forced
  assert policy.save_due(5, cfg, 0, True) == (True, True)  # a stop (preemption, time): forced
  assert policy.save_due(8, cfg, 1, False)[0] is False and policy.save_due(5, cfg, 2, True)[0] is False
  assert policy.save_due(3, configs.TrainConfig(num_steps=10, checkpoint_every=0), 0, False)[0]


def test_a_streak_starts_at_its_first_non_finite_step():
  assert policy.streak_start(done=12, skips_in_row=3) == 10
  assert policy.streak_start(done=1, skips_in_row=1) == 1


def test_rollback_goes_to_the_newest_good_checkpoint_while_rollbacks_last():
  assert policy.rollback_to([2, 6, 4], rollbacks_left=1) == 6
  assert policy.rollback_to([2, 6, 4], rollbacks_left=0) is None  # out of rollbacks: stop
  assert policy.rollback_to([], rollbacks_left=3) is None  # nothing good to go back to: stop


def test_stopped_message_names_the_streak_and_the_last_good_checkpoint():
  message = policy.stopped_message(3, 10, 12, '/w/checkpoints', [4, 8])
  assert message.startswith('3 consecutive non-finite steps (10 to 12): training stopped at step 12; '
                            'the last good checkpoint is /w/checkpoints/8. Lower TrainConfig.learning_rate')
  assert message.endswith('then rerun to resume from it')
  fresh = policy.stopped_message(2, 1, 2, '/w/checkpoints', [])
  assert 'no good checkpoint was written before it' in fresh and fresh.endswith('then rerun to start afresh')
