"""The reference code's choices, as switches (ModelConfig.logit_scale, document_start_keys), and its T5
table initialisation: each switch changes exactly what it should and nothing else (float32, 1e-5/1e-4)."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent.model import transformer
import helpers

TOL = 1e-4


def _pair(config, **switch):
  """The same weights under the default config and under the switched one."""
  model = brt.build_model(config=config, seed=2)
  params, apply, _ = brt.functional(model)
  switched = brt.build_model(config=dataclasses.replace(config, **switch), seed=2)
  _, apply_switched, _ = brt.functional(switched)
  return model, params, apply, switched, apply_switched


@pytest.mark.parametrize('name,overrides', [('rec_fixed_skip', {}),
                                            ('slide', dict(sequence_layer='relit', dropout_rate=0.0))])
def test_logit_scale_sqrt_vocab_divides_by_the_vocabulary_size(name, overrides):
  cfg = helpers.config(name, **overrides)
  model, params, apply, _, apply_vocab = _pair(cfg, logit_scale='sqrt_vocab')
  toks, start = helpers.tokens(0, 2, cfg.segment_length), np.ones(2, bool)
  by_d, carry_d = apply(params, toks, model.init_carry(2), start)
  by_vocab, carry_vocab = apply_vocab(params, toks, model.init_carry(2), start)
  ratio = math.sqrt(cfg.d_model) / math.sqrt(cfg.vocab_size)
  np.testing.assert_allclose(np.asarray(by_vocab), np.asarray(by_d) * ratio, rtol=1e-5, atol=1e-6)
  helpers.assert_close(carry_vocab, carry_d, 0.0, 'the carry does not depend on the logit scale')


def test_paper_experiments_use_the_logit_scale_the_paper_ran():
  from block_recurrent import ginconf
  ginconf.parse(['gin/experiments/paper/rec_fixed_skip.gin', 'gin/task/pg19_tokens.gin'], [])
  assert ginconf.bound_model_config().logit_scale == 'sqrt_vocab'
  ginconf.parse(['gin/experiments/tiny/rec_fixed_skip.gin', 'gin/task/pg_mini_bytes.gin'], [])
  assert ginconf.bound_model_config().logit_scale == 'sqrt_d'


def _warm(model, params, apply, batch=2, seed=7):
  n = model.config.segment_length
  return apply(params, helpers.tokens(seed, batch, n), model.init_carry(batch), np.ones(batch, bool))[1]


def test_zero_keys_change_only_block_0_of_token_attention_in_rows_that_start_a_document():
  """One sliding-window layer: its keys depend on the embeddings alone, so the zeros attended to at a
  document start can change block 0 of that row only."""
  cfg = helpers.config('slide', num_layers=1)
  model, params, apply, _, apply_zeros = _pair(cfg, document_start_keys='zeros')
  carry = _warm(model, params, apply)
  toks, start, w = helpers.tokens(1, 2, cfg.segment_length), np.array([True, False]), cfg.window
  masked, carry_masked = apply(params, toks, carry, start)
  zeros, carry_zeros = apply_zeros(params, toks, carry, start)
  masked, zeros = np.asarray(masked), np.asarray(zeros)
  assert np.max(np.abs(zeros[0, :w] - masked[0, :w])) > 1e-3  # block 0 of the starting row reads zeros
  helpers.assert_close(zeros[0, w:], masked[0, w:], 1e-5, 'later blocks of the starting row')
  helpers.assert_close(zeros[1], masked[1], 0.0, 'the row that continues its document')
  helpers.assert_close(carry_zeros, carry_masked, 0.0, 'the carry')


def test_zero_keys_are_the_zeroed_cache_attended_to_by_tokens_and_by_the_state():
  """A recurrent layer: the switch == the default model given a zeroed, visible cache and the initial
  state for the starting row (so it reaches the state's cross-attention as well as the tokens')."""
  cfg = helpers.config('rec_fixed_skip', num_layers=2, recurrent_layers=(0,))
  model, params, apply, zero_model, apply_zeros = _pair(cfg, document_start_keys='zeros')
  carry = _warm(model, params, apply)
  toks, start = helpers.tokens(2, 2, cfg.segment_length), np.array([True, False])
  masked, carry_masked = apply(params, toks, carry, start)
  zeros, carry_zeros = apply_zeros(params, toks, carry, start)
  helpers.assert_close(zeros[1], masked[1], 0.0, 'the row that continues its document')
  assert np.max(np.abs(np.asarray(zeros[0]) - np.asarray(masked[0]))) > 1e-3
  state_moved = np.abs(np.asarray(carry_zeros.states[0][0]) - np.asarray(carry_masked.states[0][0]))
  assert state_moved.max() > 1e-4  # the state read the zero keys

  zero_row = lambda t: t.at[0].set(0.0)
  initial = np.asarray(zero_model.layers[0].state.initial[...])
  by_hand = carry._replace(keys=tuple(map(zero_row, carry.keys)), values=tuple(map(zero_row, carry.values)),
                           cache_valid=np.array([True, True]),
                           states=tuple(s.at[0].set(initial) for s in carry.states))
  expected, expected_carry = apply(params, toks, by_hand, np.zeros(2, bool))
  helpers.assert_close(zeros, expected, TOL, 'logits')
  helpers.assert_close(carry_zeros, expected_carry, TOL, 'carry')
  assert bool(np.all(zero_model.init_carry(2).cache_valid))  # a fresh cache: zeros that are attended to


def test_zero_keys_need_the_xl_cache():
  with pytest.raises(brt.ConfigError, match="document_start_keys='zeros' .* use_xl_cache=True"):
    helpers.config('slide', document_start_keys='zeros', use_xl_cache=False)
  with pytest.raises(brt.ConfigError, match='unknown logit_scale'):
    helpers.config('slide', logit_scale='sqrt')


@pytest.mark.parametrize('heads,buckets', [(2, 32), (64, 32), (16, 8)])
def test_t5_tables_start_as_the_references_variance_scaling_normal(heads, buckets):
  """std 1/sqrt(buckets) (fan-in = buckets; 0.177 for T5's 32), whatever the head count."""
  cfg = brt.ModelConfig(vocab_size=260, num_layers=1, d_model=16, num_heads=heads, head_dim=4, mlp_dim=16,
                        window=4, segment_length=8, relative_buckets=buckets, relative_max_distance=64)
  tables = np.concatenate([np.asarray(transformer.Layer(cfg, 'plain', nnx.Rngs(seed)).relative_bias[...]).ravel()
                           for seed in range(2048 // (heads * buckets) + 1)])
  want = 1.0 / math.sqrt(buckets)
  assert abs(tables.std() - want) < 4 * want / math.sqrt(2 * tables.size), (tables.std(), want)
  assert abs(tables.mean()) < 4 * want / math.sqrt(tables.size)
  assert np.abs(tables).max() > 2 * want  # a normal, not a truncated one
