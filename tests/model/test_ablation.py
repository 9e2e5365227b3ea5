"""The state ablation (LanguageModel(..., ablate_state=...), brt-eval --ablate_state) changes the model only
through what it carries, and the diagnostics (LanguageModel.diagnostics) measure what they say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
from block_recurrent.configs import ConfigError
from block_recurrent.model import factory

TOL = 1e-5


def _model(name, **overrides):
  cfg = helpers.config(name, dropout_rate=0.0, **overrides)
  return cfg, factory.build(cfg, nnx.Rngs(0))


def _carried(model, cfg, batch=2):
  """A carry with history: the state and caches after one segment of random tokens."""
  _, carry = model(helpers.tokens(1, batch, cfg.segment_length), model.init_carry(batch), jnp.ones((batch,), bool))
  return carry


def _initial_states(model, carry):
  return tuple(jnp.broadcast_to(layer.state.initial[...], s.shape) for layer, s in zip(model.recurrent_layers,
                                                                                      carry.states))


@pytest.mark.parametrize('name', ['slide', 'slide_no_xl_cache'])
def test_a_model_without_state_is_unchanged_by_either_ablation(name):
  cfg, model = _model(name)
  carry, toks, go_on = _carried(model, cfg), helpers.tokens(2, 2, cfg.segment_length), jnp.zeros((2,), bool)
  normal, _ = model(toks, carry, go_on)
  for mode in ('reset_each_block', 'reset_each_segment'):
    helpers.assert_close(model(toks, carry, go_on, ablate_state=mode)[0], normal, 0.0, mode)


@pytest.mark.parametrize('name', ['rec_fixed_skip', 'rec_lstm_dual', 'feedback_fixed_skip'])
def test_reset_each_segment_is_the_normal_model_from_the_initial_state(name):
  """Only the state differs: the ablated segment == the normal one given a carry whose states are the
  learned initial ones (its caches kept), and != the normal one from the carried state."""
  cfg, model = _model(name)
  carry, toks, go_on = _carried(model, cfg), helpers.tokens(2, 2, cfg.segment_length), jnp.zeros((2,), bool)
  ablated, _ = model(toks, carry, go_on, ablate_state='reset_each_segment')
  fresh, _ = model(toks, carry._replace(states=_initial_states(model, carry)), go_on)
  helpers.assert_close(ablated, fresh, TOL, name)
  assert np.max(np.abs(np.asarray(ablated) - np.asarray(model(toks, carry, go_on)[0]))) > 1e-3


@pytest.mark.parametrize('name', ['rec_fixed_skip', 'rec_fixed_single', 'feedback_fixed_skip'])
def test_reset_each_block_is_the_model_run_a_block_at_a_time_from_the_initial_state(name):
  """reset_each_block == calling the model one block (W tokens) at a time, each call from the carried
  caches but the learned initial states."""
  cfg, model = _model(name)
  carry, toks, go_on = _carried(model, cfg), helpers.tokens(2, 2, cfg.segment_length), jnp.zeros((2,), bool)
  ablated, _ = model(toks, carry, go_on, ablate_state='reset_each_block')
  by_block, c = [], carry
  for t in range(cfg.segment_length // cfg.window):
    logits, c = model(toks[:, t * cfg.window:(t + 1) * cfg.window], c._replace(states=_initial_states(model, c)), go_on)
    by_block.append(logits)
  helpers.assert_close(ablated, jnp.concatenate(by_block, axis=1), TOL, name)
  per_segment, _ = model(toks, carry, go_on, ablate_state='reset_each_segment')
  assert np.max(np.abs(np.asarray(ablated) - np.asarray(per_segment))) > 1e-3  # later blocks differ


def test_transformer_xl_drops_its_cache():
  cfg, model = _model('xl')
  carry, toks, go_on = _carried(model, cfg), helpers.tokens(2, 2, cfg.segment_length), jnp.zeros((2,), bool)
  no_cache = carry._replace(cache_valid=jnp.zeros_like(carry.cache_valid))
  for mode in ('reset_each_block', 'reset_each_segment'):
    helpers.assert_close(model(toks, carry, go_on, ablate_state=mode)[0], model(toks, no_cache, go_on)[0], TOL, mode)
  assert np.max(np.abs(np.asarray(model(toks, carry, go_on)[0]) - np.asarray(model(toks, no_cache, go_on)[0]))) > 1e-3


def test_an_unknown_ablation_is_a_clear_error():
  cfg, model = _model('rec_fixed_skip')
  with pytest.raises(ConfigError, match="ablate_state 'reset': use one of none, reset_each_block"):
    model(helpers.tokens(0, 1, cfg.segment_length), model.init_carry(1), jnp.ones((1,), bool), ablate_state='reset')


def test_diagnostics_measure_the_gate_the_state_change_and_the_state_share():
  cfg, model = _model('rec_fixed_skip')
  layer = cfg.recurrent_indices[0]
  carry, toks, go_on = _carried(model, cfg), helpers.tokens(2, 2, cfg.segment_length), jnp.zeros((2,), bool)
  d = {k: float(v) for k, v in model.diagnostics(toks, carry, go_on).items()}
  assert sorted(d) == sorted(f'{n}/layer{layer}' for n in ('gate_open', 'state_change', 'state_share'))
  # The fixed gate's openness is a parameter: the mean of 1 - sigmoid(bias).
  gate = model.layers[layer].state.gate
  assert d[f'gate_open/layer{layer}'] == pytest.approx(float(jnp.mean(1 - jax.nn.sigmoid(gate.bias[...]))), rel=1e-5)
  assert 0.0 < d[f'state_share/layer{layer}'] < 1.0
  # A shut gate keeps the state as it is: no change per block, and the same openness reads 0.
  gate.bias[...] = jnp.full_like(gate.bias[...], 40.0)
  shut = {k: float(v) for k, v in model.diagnostics(toks, carry, go_on).items()}
  assert shut[f'gate_open/layer{layer}'] < 1e-12 and shut[f'state_change/layer{layer}'] < 1e-6
  assert _model('slide')[1].diagnostics(toks, carry, go_on) == {}  # nothing to watch without a state


def test_state_gate_bias_sets_how_much_of_the_state_the_gates_keep_at_first():
  for gate in ('fixed', 'lstm'):
    cfg, model = _model('rec_fixed_skip', gate=gate, state_gate_bias=2.0)
    _, paper = _model('rec_fixed_skip', gate=gate)
    bias, paper_bias = model.layers[cfg.recurrent_indices[0]].state.gate.bias[...], \
        paper.layers[cfg.recurrent_indices[0]].state.gate.bias[...]
    keep = bias if gate == 'fixed' else bias[0]
    assert abs(float(jnp.mean(keep)) - 2.0) < 0.1 and abs(float(jnp.mean(paper_bias))) < 0.1
    if gate == 'lstm':  # the input gate's bias is left as the paper's
      assert abs(float(jnp.mean(bias[1]))) < 0.1
  carry, toks, go_on = _carried(model, cfg), helpers.tokens(2, 2, cfg.segment_length), jnp.zeros((2,), bool)
  cfg, model = _model('rec_fixed_skip', state_gate_bias=2.0)
  opened = float(model.diagnostics(toks, _carried(model, cfg), go_on)[f'gate_open/layer{cfg.recurrent_indices[0]}'])
  assert opened == pytest.approx(1 - float(jax.nn.sigmoid(2.0)), abs=0.02)
