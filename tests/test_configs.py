"""Configuration: every gin file loads, experiments only include, bad input fails in one clear line."""

import dataclasses
import pathlib

import numpy as np
import pytest

import block_recurrent as brt
from block_recurrent import ginconf
import helpers

GIN = pathlib.Path(__file__).resolve().parent.parent / 'gin'
EXPERIMENTS = sorted(p.relative_to(GIN.parent) for p in (GIN / 'experiments').rglob('*.gin'))


@pytest.mark.parametrize('path', EXPERIMENTS, ids=str)
def test_every_experiment_loads_and_only_includes(path):
  lines = [l.strip() for l in (GIN.parent / path).read_text().splitlines()]
  assert all(l.startswith('include ') or not l or l.startswith('#') for l in lines), path
  cfg = ginconf.model_config([str(path)])
  assert isinstance(cfg, brt.ModelConfig)
  assert brt.count_params(brt.abstract_model(cfg)) > 0  # builds, shapes only


@pytest.mark.parametrize('path', sorted(p.relative_to(GIN) for p in GIN.rglob('*.gin')
                                        if 'experiments' not in p.parts), ids=str)
def test_every_building_block_parses_on_its_own(path):
  ginconf.parse([str(path)])


def test_paper_variants_are_what_they_say():
  rec = ginconf.model_config(['gin/experiments/paper/rec_lstm_dual.gin'])
  assert (rec.gate, rec.wiring, rec.recurrent_indices, rec.num_states) == ('lstm', 'dual', (9,), 512)
  assert (rec.segment_length, rec.window, rec.vocab_size) == (4096, 512, 32128)
  assert ginconf.model_config(['gin/experiments/paper/slide13.gin']).total_layers == 13
  xl = ginconf.model_config(['gin/experiments/paper/xl2048.gin'])
  assert (xl.segment_length, xl.window, xl.recurrent_layers) == (2048, 2048, ())
  assert ginconf.model_config(['gin/experiments/paper/feedback_fixed_skip.gin']).feedback


def test_composition_order_does_not_matter_for_distinct_knobs():
  files = ['base.gin', 'size/tiny.gin', 'vocab/bytes.gin', 'window/n32_w8.gin', 'recurrent/rec.gin',
           'recurrent/gate/lstm.gin', 'recurrent/wiring/single.gin', 'recurrent/states/8.gin']
  assert ginconf.model_config(files) == ginconf.model_config(files[::-1])


def test_tiny_experiments_are_tiny():
  for name in ('rec_fixed_skip', 'slide', 'xl'):
    cfg = ginconf.model_config([f'experiments/tiny/{name}.gin'])
    assert cfg.total_layers <= 3 and cfg.d_model <= 64 and 8 <= cfg.window <= 16


@pytest.mark.parametrize('overrides, message', [
    (dict(segment_length=30), 'not a multiple of window'),
    (dict(window=64), 'larger than segment_length'),
    (dict(gate='gru'), "unknown gate 'gru'"),
    (dict(wiring='triple'), "unknown wiring 'triple'"),
    (dict(recurrent_layers=(3,)), 'recurrent layer index 3 is out of range'),
    (dict(recurrent_layers=(-4,)), 'recurrent layer index -4 is out of range'),
    (dict(recurrent_layers=(1, -2)), 'same layer twice'),
    (dict(feedback=True), 'feedback needs exactly one recurrent layer'),
    (dict(remat='sometimes'), 'unknown remat policy'),
    (dict(d_model=0), 'd_model must be a positive integer'),
])
def test_bad_config_is_one_clear_line(overrides, message):
  with pytest.raises(brt.ConfigError, match=message) as info:
    dataclasses.replace(helpers.TINY, **overrides)
  assert '\n' not in str(info.value)


def test_bad_gin_is_one_clear_line():
  with pytest.raises(brt.ConfigError, match="doesn't have a parameter named 'gatez'"):
    ginconf.model_config(['experiments/tiny/slide.gin'], ["configs.ModelConfig.gatez = 'x'"])
  with pytest.raises(brt.ConfigError, match="unknown gate 'x'") as info:
    ginconf.model_config(['experiments/tiny/slide.gin'], ["configs.ModelConfig.gate = 'x'"])
  assert '\n' not in str(info.value)
  with pytest.raises(brt.ConfigError, match='not found'):
    ginconf.model_config(['experiments/tiny/nope.gin'])


@pytest.fixture(scope='module')
def tiny_model():
  return brt.build_model(gin_files=['gin/experiments/tiny/rec_fixed_skip.gin'], seed=0)


@pytest.mark.parametrize('tokens_shape, message', [
    ((2, 30), 'not a multiple of the window 8'),
    ((2, 4), 'window 8 is larger than the segment'),
    ((2, 3, 8), r'tokens must be int32 \[batch, length\]'),
])
def test_bad_input_shapes(tiny_model, tokens_shape, message):
  with pytest.raises(brt.ConfigError, match=message):
    tiny_model(np.zeros(tokens_shape, np.int32), tiny_model.init_carry(2), np.ones(2, bool))


def test_token_ids_outside_vocabulary(tiny_model):
  tokens = np.zeros((2, 32), np.int32)
  tokens[1, 5] = 260
  with pytest.raises(brt.ConfigError, match=r'token ids must lie in \[0, 260\)'):
    tiny_model(tokens, tiny_model.init_carry(2), np.ones(2, bool))
  tokens[1, 5] = -1
  with pytest.raises(brt.ConfigError, match='min -1'):
    tiny_model(tokens, tiny_model.init_carry(2), np.ones(2, bool))


def test_carry_batch_mismatch(tiny_model):
  with pytest.raises(brt.ConfigError, match=r'use model.init_carry\(2\)'):
    tiny_model(np.zeros((2, 32), np.int32), tiny_model.init_carry(3), np.ones(2, bool))


def test_public_api_round_trip(tiny_model):
  carry = tiny_model.init_carry(2)
  logits, carry = tiny_model(helpers.tokens(0, 2, 32), carry, np.array([True, True]))
  assert logits.shape == (2, 32, 260) and np.all(np.isfinite(np.asarray(logits)))
  assert carry.states[0].shape == (2, 4, 32) and len(carry.keys) == 3


def test_task_gin_files_bind_the_data_config():
  ginconf.parse(['task/pg_mini_tokens.gin', 'vocab/pg_mini_8k.gin'])
  assert ginconf.bound_data_config().task == 'pg_mini_tokens'
  assert ginconf.bound_model_config().vocab_size == 8000
  ginconf.parse(['task/github_bytes.gin'])
  with pytest.raises(brt.ConfigError, match='github_bytes needs a folder: set configs.DataConfig.data_dir'):
    ginconf.bound_data_config()
  ginconf.parse(['task/github_bytes.gin'], ["configs.DataConfig.data_dir = '/tmp/repos'"])
  assert ginconf.bound_data_config().data_dir == '/tmp/repos'
  with pytest.raises(brt.ConfigError, match='must be <corpus>_bytes'):
    brt.configs.DataConfig(task='pg19')
