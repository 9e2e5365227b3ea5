"""Decoding: token by token == the block form (teacher forcing) for every variant, across a document
reset; prefill + decode == pure decode; prefill compiles once for prompts of any length; greedy
generation is deterministic; a seed reproduces sampling; no id past the vocabulary is ever sampled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent.model import decode, prefill as prefill_lib
from block_recurrent.model.lm import LanguageModel
import helpers


def _model(name):
  return brt.build_model(config=helpers.config(name, dropout_rate=0.0), seed=0)


@pytest.mark.parametrize('name', list(helpers.VARIANTS))
def test_token_by_token_equals_block_form_across_a_reset(name):
  model = _model(name)
  cfg = model.config
  n, w = cfg.segment_length, cfg.window
  segments = max(2, -(-4 * w // n))  # at least 3 blocks and a partial one
  toks = helpers.tokens(1, 2, segments * n)
  reset_at = n  # row 0 starts a new document with the second segment; row 1 goes on
  params, apply, graphdef = brt.functional(model)
  carry, block_logits = model.init_carry(2), []
  for s in range(segments):
    start = np.array([True, True]) if s == 0 else np.array([s * n == reset_at, False])
    logits, carry = apply(params, toks[:, s * n:(s + 1) * n], carry, start)
    block_logits.append(logits)
  block_logits = np.concatenate(block_logits, axis=1)

  length = segments * n - w // 2  # end inside a block
  start = np.zeros((2, length), bool)
  start[:, 0] = True
  start[0, reset_at] = True
  run = jax.jit(lambda p, t, s: decode.run(nnx.merge(graphdef, p), decode.init(nnx.merge(graphdef, p), 2), t, s))
  step_logits, ds = run(params, toks[:, :length], start)
  helpers.assert_close(step_logits, block_logits[:, :length], 1e-4, f'{name}: token-by-token vs block form')
  assert np.asarray(ds.position).tolist() == [length - reset_at, length]
  if cfg.recurrent_layers:  # the state really moved at block boundaries, unlike a frozen one
    assert float(jnp.max(jnp.abs(ds.states[0] - carry.states[0]))) > 0  # partial block not yet folded in


@pytest.mark.parametrize('name', ['rec_fixed_skip', 'feedback_fixed_skip', 'slide_no_xl_cache', 'rec_clear_state'])
def test_prefill_then_decode_equals_pure_decode(name):
  model = _model(name)
  cfg = model.config
  graphdef, params = nnx.split(model)
  prompt_len = cfg.segment_length + 2 * cfg.window + 3  # two chunks of whole blocks, then 3 tokens
  toks = helpers.tokens(2, 1, prompt_len + 6)

  @jax.jit
  def both(params, toks):
    m = nnx.merge(graphdef, params)
    start = jnp.zeros(toks.shape, bool).at[:, 0].set(True)
    pure, _ = decode.run(m, decode.init(m, 1), toks, start)
    last, ds = prefill_lib.prefill(m, toks[:, :prompt_len])
    rest, _ = decode.run(m, ds, toks[:, prompt_len:])
    return pure, last, rest

  pure, last, rest = both(params, toks)
  helpers.assert_close(last, pure[:, prompt_len - 1], 1e-4, f'{name}: logits after the prefilled prompt')
  helpers.assert_close(rest, pure[:, prompt_len:], 1e-4, f'{name}: decoding after prefill')


@pytest.fixture(scope='module')
def tiny_rec():
  return _model('rec_fixed_skip')


def test_prefill_compiles_once_for_prompts_of_any_length(tiny_rec):
  n = tiny_rec.config.segment_length  # a partial block, then 1, 1.5, 3 and 5 segments
  helpers.check_prefill(tiny_rec, [1, 13, n, 3 * n // 2, 3 * n, 5 * n + 5], 'rec_fixed_skip')


def test_greedy_generation_is_deterministic_and_seeds_reproduce_sampling(tiny_rec):
  kw = dict(max_new_tokens=3 * tiny_rec.config.window + 2)
  greedy = [brt.generate_ids(tiny_rec, None, [70, 71, 72], temperature=0.0, seed=s, **kw) for s in (0, 1)]
  assert greedy[0] == greedy[1] and len(greedy[0]) == kw['max_new_tokens']
  # Greedy decoding picks the block form's argmax at every position it produced.
  params, apply, _ = brt.functional(tiny_rec)
  seq = np.asarray([[0, 70, 71, 72] + greedy[0]], np.int32)
  n = tiny_rec.config.segment_length
  padded = np.zeros((1, -(-seq.shape[1] // n) * n), np.int32)
  padded[:, :seq.shape[1]] = seq
  carry, chosen = tiny_rec.init_carry(1), []
  for s in range(0, padded.shape[1], n):
    logits, carry = apply(params, padded[:, s:s + n], carry, np.array([s == 0]))
    chosen.append(np.argmax(np.asarray(logits), -1))
  chosen = np.concatenate(chosen, axis=1)[0]
  assert chosen[3:seq.shape[1] - 1].tolist() == greedy[0]

  sampled = [brt.generate_ids(tiny_rec, None, [70], temperature=1.0, top_k=50, top_p=0.9, seed=s, **kw)
             for s in (7, 7, 8)]
  assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_empty_prompt_and_invalid_utf8_stream(tiny_rec):
  pieces = []
  text = brt.generate(tiny_rec, None, '', max_new_tokens=40, temperature=1.0, seed=3, stream=pieces.append)
  assert ''.join(pieces) == text and len(pieces) == 41
  assert isinstance(text, str) and '\ufffd' in text  # random bytes from an untrained model: replaced


def test_sampling_filters():
  from block_recurrent.generation import sample
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  draws = lambda **kw: set(np.asarray(jax.vmap(lambda k: sample(logits, k, 1.0, **kw)[0])(keys)).tolist())
  assert draws(top_k=2, top_p=1.0) == {0, 1}
  assert draws(top_k=0, top_p=0.7) == {0, 1}  # 0.5 < 0.7 so the second token is needed, the third is not
  assert draws(top_k=0, top_p=0.5) == {0}
  assert draws(top_k=0, top_p=1.0) == {0, 1, 2, 3}
  assert int(sample(logits, keys[0], 0.0, 0, 1.0)[0]) == 0


class _FavoursPadding(LanguageModel):
  """A model whose output layer makes id 259 (past the 259 ids of the byte vocabulary) the likeliest."""

  def logits(self, y_BxNxD):
    return super().logits(y_BxNxD).at[..., 259].add(1e3)


def test_sampling_never_produces_ids_past_the_vocabulary():
  from block_recurrent.generation import ByteCodec, sample
  logits = jnp.zeros((1, 260)).at[:, 259].set(50.0).at[:, 70].set(1.0)
  keys = jax.random.split(jax.random.key(0), 200)
  draws = lambda t, **kw: np.asarray(jax.vmap(lambda k: sample(logits, k, t, **kw)[0])(keys))
  assert set(draws(0.0, top_k=0, top_p=1.0).tolist()) == {259}  # without a limit the padding id wins
  assert set(draws(0.0, top_k=0, top_p=1.0, vocab_size=259).tolist()) == {70}
  for kw in (dict(top_k=0, top_p=1.0), dict(top_k=1, top_p=1.0), dict(top_k=0, top_p=0.1), dict(top_k=3, top_p=0.5)):
    assert draws(1.0, vocab_size=259, **kw).max() < 259, kw
  assert ByteCodec().decode([259, 75, 1]) == 'H'  # ids that stand for no byte decode to nothing


def test_generate_never_produces_ids_past_the_byte_vocabulary():
  from block_recurrent import generation
  model = _FavoursPadding(helpers.config('rec_fixed_skip', dropout_rate=0.0), nnx.Rngs(params=0))
  graphdef, params = nnx.split(model)
  logits, _ = generation._prefill(graphdef)(params, np.array([[0, 70]], np.int32))  # pylint: disable=protected-access
  assert int(np.argmax(logits)) == 259  # what the model would choose
  sampled = brt.generate_ids(model, None, [70], max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=1,
                             vocab_size=259)  # greedy masks the same way (test_sampling_never_produces_...)
  assert max(sampled) < 259
  pieces = []  # brt-generate's path: the byte codec limits sampling to its 259 ids ('C' is id 70)
  text = brt.generate(model, None, 'C', max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9, seed=1,
                      stream=pieces.append)
  assert text == generation.ByteCodec().decode(sampled) == ''.join(pieces)


def test_sentencepiece_streaming_gives_the_decoded_text():
  from block_recurrent.data import tasks
  from block_recurrent.generation import ByteCodec, SentencePieceCodec
  codec = SentencePieceCodec(tasks.DEFAULT_SPM)
  assert codec.vocab_size == tasks.vocab_size('pg_mini_tokens')
  assert ByteCodec.vocab_size == tasks.vocab_size('pg_mini_bytes') == 259
  text = 'It is a truth universally acknowledged — naïve café, 12 o\'clock.'
  ids = codec.encode(text)
  feed = codec.decoder()
  streamed = ''.join(feed(i) for i in ids) + feed(None)
  assert streamed == codec.decode(ids) and len(ids) > 5
  assert codec.encode('') == []


def test_doc_table_lists_the_generation_cases():
  import doc_tables
  rows = doc_tables.rows('### Generation')
  assert sorted(rows) == ['gen-long-prompt', 'gen-sample-past-vocab']
  for name in ('test_sampling_never_produces_ids_past_the_vocabulary',
               'test_generate_never_produces_ids_past_the_byte_vocabulary', 'test_prefill_compiles_once_for_prompts_of_any_length'):
    assert name in ''.join(rows.values()) and name in globals(), name
