"""Configuration: every gin file loads, experiments only include, bad input fails in one clear line; and
fuzzed (tests/fuzzing.py): any ModelConfig, DataConfig or TrainConfig is accepted (a model then builds and
traces, shapes only) or is one clear ConfigError line."""

import dataclasses
import math
import pathlib

from hypothesis import example, given, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
import pytest

import block_recurrent as brt
from block_recurrent import api, configs, ginconf
from block_recurrent.data import segments
from fuzzing import attempt, fuzz, make_documents
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


# Fuzzed: any value of any field is accepted (and, for a model, builds and traces) or is one clear line.

def abstract_forward(cfg: configs.ModelConfig, batch: int):
  """Logits and carry of one segment as ShapeDtypeStructs: the model is built and traced, nothing runs."""
  model = api.abstract_model(cfg)
  assert api.count_params(model) > 0
  graphdef, state = nnx.split(model)
  dropout = cfg.sequence_layer == 'attention' and cfg.dropout_rate > 0

  def forward(state):
    m = nnx.merge(graphdef, state)
    return m(jnp.zeros((batch, cfg.segment_length), jnp.int32), m.init_carry(batch), jnp.ones((batch,), bool),
             deterministic=not dropout, dropout_key=jax.random.key(0) if dropout else None)

  logits, carry = jax.eval_shape(forward, state)
  assert logits.shape == (batch, cfg.segment_length, cfg.vocab_size) and logits.dtype == jnp.float32
  return logits, carry


@st.composite
def valid_model_kwargs(draw, kind: str | None = None) -> dict:
  """A configuration valid by construction, at toy sizes, of one family (any if None) with any options."""
  kind = kind or draw(st.sampled_from(configs.SEQUENCE_LAYERS))
  num_layers, extra = draw(st.integers(1, 3)), draw(st.integers(0, 1))
  total = num_layers + extra
  window, buckets = draw(st.integers(1, 4)), draw(st.integers(2, 8))
  boolean = st.booleans()
  indices = lambda: tuple(draw(st.sampled_from([i, i - total]))
                          for i in draw(st.lists(st.integers(0, total - 1), unique=True, max_size=total)))
  kw = dict(vocab_size=draw(st.integers(1, 20)), num_layers=num_layers, extra_layers=extra,
            d_model=draw(st.integers(1, 8)), num_heads=draw(st.integers(1, 3)), head_dim=draw(st.integers(1, 4)),
            mlp_dim=draw(st.integers(1, 8)), window=window, segment_length=window * draw(st.integers(1, 3)),
            num_states=draw(st.integers(1, 3)), relative_buckets=buckets,
            relative_max_distance=draw(st.integers(buckets // 2 + 1, 40)),
            gate=draw(st.sampled_from(configs.GATES)), wiring=draw(st.sampled_from(configs.WIRINGS)),
            state_gate_bias=draw(st.one_of(st.none(), st.floats(-4, 4))),
            normalize_keys=draw(boolean), use_xl_cache=draw(boolean), dtype=draw(st.sampled_from(configs.DTYPES)),
            remat=draw(st.sampled_from(configs.REMAT_POLICIES)), block_major=draw(boolean), unroll=draw(boolean),
            scan_unroll=draw(st.integers(1, 3)), sequence_layer=kind)
  if kind == 'attention':
    recurrent = indices()
    kw.update(recurrent_layers=draw(st.sampled_from([recurrent, list(recurrent)])),
              feedback=len(recurrent) == 1 and draw(boolean), always_clear_state=draw(boolean),
              dropout_rate=draw(st.sampled_from([0.0, 0.05, 0.5])))
  else:
    attention = indices()
    if kind == 'gtrxl' or attention:
      kw['d_model'] += kw['d_model'] % 2  # GTrXL's sinusoidal positions
    kw.update(attention_layers=attention, relit_eta=draw(st.integers(1, 3)),
              relit_gating=draw(st.sampled_from(['separable', 'reference'])), relit_chunk=draw(st.integers(1, 5)),
              arelit_rank=draw(st.integers(1, 3)), arelit_mode=draw(st.sampled_from(['fixed', 'faithful'])),
              relit_gate_bias=draw(st.one_of(st.none(), st.floats(-4, 4), st.integers(-2, 2))),
              gtrxl_memory=draw(st.integers(1, 5)), dropout_rate=0.0)
  return kw


@pytest.mark.parametrize('kind', configs.SEQUENCE_LAYERS)
@fuzz(2)
@given(data=st.data(), batch=st.integers(1, 2))
def test_valid_model_configs_build_and_trace(kind, data, batch):
  kwargs = data.draw(valid_model_kwargs(kind))
  cfg = configs.ModelConfig(**kwargs)
  assert hash(cfg) == hash(configs.ModelConfig(**kwargs))  # frozen: usable as a cache key (generation's)
  abstract_forward(cfg, batch)


def test_gin_lists_of_layers_become_tuples():
  cfg = configs.ModelConfig(vocab_size=3, num_layers=2, d_model=2, num_heads=1, head_dim=1, mlp_dim=1, window=1,
                            segment_length=2, num_states=1, recurrent_layers=[0], dropout_rate=0.0)
  assert cfg.recurrent_layers == (0,)  # was a list: hash(cfg), and generation's cache of programs, raised
  assert hash(cfg) == hash(dataclasses.replace(cfg, recurrent_layers=(0,)))
  abstract_forward(cfg, 1)


POSITIVE = [0, -1, -8, 2.5, '4', None, True]
NAMES = ['', 'GRU', None, 3, 'Fixed']
PERTURB = {  # field: (valid values, invalid values)
    **{name: (st.integers(1, 6), POSITIVE) for name in (
        'vocab_size', 'num_layers', 'd_model', 'num_heads', 'head_dim', 'mlp_dim', 'window', 'segment_length',
        'num_states', 'relative_buckets', 'relative_max_distance', 'scan_unroll')},
    **{name: (st.integers(1, 4), POSITIVE) for name in ('relit_eta', 'relit_chunk', 'arelit_rank', 'gtrxl_memory')},
    'extra_layers': (st.integers(0, 2), [-1, 0.5, '1', None, True]),
    'recurrent_layers': (st.lists(st.integers(-4, 4), max_size=3).flatmap(lambda l: st.sampled_from([tuple(l), l])),
                         [5, None, '', 'ab', (0.5,), ((0,),), (True,), ('0',)]),
    'attention_layers': (st.lists(st.integers(-4, 4), max_size=3).map(tuple),
                         [1, None, '', 'x', (0.5,), (True,)]),
    **{name: (st.sampled_from(values), NAMES) for name, values in (
        ('gate', configs.GATES), ('wiring', configs.WIRINGS), ('sequence_layer', configs.SEQUENCE_LAYERS),
        ('remat', configs.REMAT_POLICIES), ('dtype', configs.DTYPES),
        ('relit_gating', ('separable', 'reference')), ('arelit_mode', ('fixed', 'faithful')))},
    **{name: (st.booleans(), ['False', 'yes', None, 0, 1]) for name in (
        'feedback', 'always_clear_state', 'normalize_keys', 'use_xl_cache', 'block_major', 'unroll')},
    'relit_gate_bias': (st.one_of(st.none(), st.floats(-4, 4)), [math.nan, math.inf, -math.inf, 'x', True]),
    'state_gate_bias': (st.one_of(st.none(), st.floats(-4, 4)), [math.nan, math.inf, -math.inf, 'x', True]),
    'dropout_rate': (st.sampled_from([0.0, 0, 0.1, 0.5]), [-0.1, 1.0, 1.5, math.nan, None, '0.1', True]),
}
LINEAR_ONLY = {'relit_eta', 'relit_chunk', 'arelit_rank', 'gtrxl_memory', 'relit_gating', 'arelit_mode',
               'relit_gate_bias'}


def _draw_fields(data, fields: dict) -> tuple[dict, list[str]]:
  """1 to 3 of `fields` ({name: (valid strategy, invalid values)}), each given a valid or an invalid value:
  (the keyword arguments, the names given invalid ones)."""
  kwargs, bad = {}, []
  for name in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)):
    good, invalid = fields[name]
    if data.draw(st.booleans()):
      kwargs[name] = data.draw(st.sampled_from(invalid))
      bad.append(name)
    else:
      kwargs[name] = data.draw(good)
  return kwargs, bad


@fuzz(30)
@given(kwargs=valid_model_kwargs(), data=st.data())
@example(kwargs=dict(relative_buckets=1), data=None)  # was ZeroDivisionError in attention.distance_buckets
@example(kwargs=dict(relative_buckets=32, relative_max_distance=16), data=None)  # was NaN buckets, silently
@example(kwargs=dict(dropout_rate='0.1'), data=None)  # was TypeError
@example(kwargs=dict(extra_layers=None), data=None)  # was TypeError
@example(kwargs=dict(sequence_layer='relit', attention_layers=1, dropout_rate=0.0), data=None)  # was TypeError
@example(kwargs=dict(recurrent_layers=((0,),)), data=None)  # was TypeError
@example(kwargs=dict(sequence_layer='gtrxl', d_model=3), data=None)  # was an einsum shape error (sinusoids)
@example(kwargs=dict(sequence_layer='relit', attention_layers=(0,), d_model=5), data=None)  # the same
def test_any_model_config_is_accepted_and_builds_or_is_one_clear_line(kwargs, data):
  bad = []
  if data is not None:
    drawn, bad = _draw_fields(data, PERTURB)
    kwargs.update(drawn)
  else:
    bad = ['explicit example']
  base = dict(vocab_size=7, num_layers=2, d_model=4, num_heads=1, head_dim=2, mlp_dim=4, window=2,
              segment_length=4, num_states=2, dropout_rate=0.0)
  kwargs = {**base, **kwargs}
  cfg, error = attempt(configs.ModelConfig, **kwargs)
  applies = [n for n in bad if n not in LINEAR_ONLY or kwargs.get('sequence_layer') not in (None, 'attention')]
  if applies:
    assert error is not None, (applies, kwargs)
  if cfg is not None:
    hash(cfg)
    abstract_forward(cfg, 2)


def test_model_config_errors_name_the_field_and_the_fix():
  for kwargs, message in [(dict(relative_buckets=1), 'relative_buckets must be at least 2'),
                          (dict(relative_max_distance=16), 'relative_max_distance 16 must exceed'),
                          (dict(dropout_rate='0.1'), 'dropout_rate must be a number in [0, 1)'),
                          (dict(feedback='False'), 'ModelConfig.feedback must be True or False')]:
    _, error = attempt(configs.ModelConfig, **kwargs)
    assert error is not None and message in str(error), (kwargs, error)


DATA_FIELDS = {  # field: (valid values, invalid values)
    'task': (st.sampled_from(['pg_mini_bytes', 'pg19_tokens', 'arxiv_bytes', 'text_folder_bytes', 'github_tokens']),
             ['pg19', '', '_bytes', None, 5, 'pg_mini_words']),
    'data_dir': (st.sampled_from([None, '/tmp/corpus']), [5, ['/tmp']]),
    'spm_path': (st.sampled_from([None, '/tmp/v.model']), [5, True]),
    'batch_size': (st.integers(1, 8), [0, -1, 2.0, '8', None, True]),
    'eval_batch_size': (st.one_of(st.none(), st.integers(1, 4)), [0, -2, 1.5, '4', True]),
    'shuffle_seed': (st.one_of(st.none(), st.integers(0, 10)), [-1, 1.5, 'x', True]),
    'num_epochs': (st.one_of(st.none(), st.integers(1, 3)), [0, -1, 1.5, '2', True]),
    'data_shards': (st.integers(0, 4), [-1, 1.5, None, True]),
}


@fuzz(40)
@given(data=st.data())
@example(data=None)
def test_any_data_config_is_accepted_and_batches_or_is_one_clear_line(data):
  if data is None:  # was TypeError ('>' between str and int)
    kwargs, bad = {'eval_batch_size': '4'}, ['eval_batch_size']
  else:
    kwargs, bad = _draw_fields(data, DATA_FIELDS)
  cfg, error = attempt(configs.DataConfig, **kwargs)
  if bad:
    assert error is not None, (bad, kwargs)
  if cfg is not None:  # whatever it accepts, the batcher accepts too
    for batch_size in (cfg.batch_size, cfg.eval_batch_size or cfg.batch_size):
      batcher = segments.DocumentBatcher(make_documents([3, 4], 0), batch_size=batch_size, segment_length=4,
                                         shuffle_seed=cfg.shuffle_seed, num_epochs=cfg.num_epochs or 1)
      assert next(batcher).targets.shape == (batch_size, 4)


TRAIN_FIELDS = {  # field: (valid values, invalid values); numbers only (the loop owns the types)
    'num_steps': (st.integers(1, 10**6), [0, -1]),
    'optimizer': (st.sampled_from(configs.OPTIMIZERS), ['sgd', '', 'Adam']),
    'schedule': (st.sampled_from(configs.SCHEDULES), ['exp', '']),
    'learning_rate': (st.floats(1e-6, 10), [0.0, -1e-3, math.nan]),
    'warmup_steps': (st.integers(0, 10**4), [-1]),
    'log_every': (st.integers(0, 100), [-5]),
    'eval_every': (st.integers(0, 100), [-1]),
    'eval_segments': (st.integers(0, 100), [-1]),
    'checkpoint_every': (st.integers(0, 100), [-1]),
    'keep_checkpoints': (st.integers(1, 5), [0, -1]),
}


@fuzz(30)
@given(data=st.data())
def test_any_train_config_is_accepted_or_is_one_clear_line(data):
  kwargs, bad = _draw_fields(data, TRAIN_FIELDS)
  cfg, error = attempt(configs.TrainConfig, **kwargs)
  assert (error is not None) == bool(bad), (bad, kwargs, error)
  if cfg is not None:
    assert all(getattr(cfg, name) == value for name, value in kwargs.items())
