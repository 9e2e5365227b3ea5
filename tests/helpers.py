"""Tiny model variants shared by the test modules (every variant the paper compares, at tiny size)."""

import dataclasses

import jax
import numpy as np

import block_recurrent as brt

TINY = brt.ModelConfig(vocab_size=260, num_layers=3, d_model=32, num_heads=2, head_dim=16, mlp_dim=64,
                       window=8, segment_length=32, num_states=4, dropout_rate=0.05)

VARIANTS = {
    'slide': {},
    'xl': dict(window=16, segment_length=16),
    'rec_fixed_skip': dict(recurrent_layers=(-2,)),
    'rec_fixed_dual': dict(recurrent_layers=(-2,), wiring='dual'),
    'rec_fixed_single': dict(recurrent_layers=(-2,), wiring='single'),
    'rec_lstm_skip': dict(recurrent_layers=(-2,), gate='lstm'),
    'rec_lstm_dual': dict(recurrent_layers=(-2,), gate='lstm', wiring='dual'),
    'rec_lstm_single': dict(recurrent_layers=(-2,), gate='lstm', wiring='single'),
    'feedback_fixed_skip': dict(recurrent_layers=(1,), feedback=True),
    'rec_two_layers': dict(recurrent_layers=(0, -1), gate='lstm'),
    'rec_clear_state': dict(recurrent_layers=(-2,), always_clear_state=True),
    'rec_plain_scaling': dict(recurrent_layers=(-2,), normalize_keys=False),
    'slide_no_xl_cache': dict(use_xl_cache=False),
    'rec_grouped_kv': dict(recurrent_layers=(-2,), num_heads=4, head_dim=8, kv_heads=2),  # 2 queries per K/V
    'rec_sub_blocked': dict(recurrent_layers=(-2,), attention_sub_blocks=4),  # attention in 4 query groups
    # the reference code's two choices: zero keys attended at a document start, logits / sqrt(vocab)
    'rec_reference': dict(recurrent_layers=(-2,), document_start_keys='zeros', logit_scale='sqrt_vocab'),
}
RECURRENT = [name for name, kw in VARIANTS.items() if kw.get('recurrent_layers')]


def config(name: str, **overrides) -> brt.ModelConfig:
  return dataclasses.replace(TINY, **{**VARIANTS[name], **overrides})


def tokens(seed: int, batch: int, length: int, vocab: int = 260) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).astype(np.int32)


def assert_close(a, b, tol, what=''):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    err = np.max(np.abs(x - y)) if x.size else 0.0
    assert err <= tol, f'{what}: max abs difference {err:.3g} > {tol}'


# Two rows per step on the 8 fake CPU devices: the batch splits over a data axis of 2 (the other 4 devices
# on the model axis), since a batch that does not split over the batch axes is an error.
MESH = ('configs.MeshConfig.data = 2', 'configs.MeshConfig.model = -1')
MESH_ARGS = tuple(f'--gin_param={p}' for p in MESH)


def check_prefill(model, lengths, what=''):
  """brt-generate's prefill (generation._prefill) gives the segment form's logits at a prompt's last token
  for prompts of every length in `lengths`, with one compilation of each of its programs, on weights placed
  on a mesh as brt-generate restores them (heads split over 2 devices); so does its token step."""
  from block_recurrent import generation, sharding  # pylint: disable=import-outside-toplevel
  params, apply, graphdef = brt.functional(model)
  mesh = sharding.make_mesh(1, 1, 2, devices=jax.devices()[:2])
  placed = jax.device_put(params, sharding.param_shardings(mesh, params))
  n = model.config.segment_length
  prefill = generation._prefill(graphdef, mesh)  # pylint: disable=protected-access
  for length in lengths:
    ids = tokens(length, 1, length, 259)
    ids[:, 0] = 0  # a document's first input
    logits, _ = prefill(placed, ids)
    padded = np.zeros((1, -(-length // n) * n), np.int32)
    padded[:, :length] = ids
    carry = model.init_carry(1)
    for s in range(0, padded.shape[1], n):
      segment_logits, carry = apply(params, padded[:, s:s + n], carry, np.array([s == 0]))
    assert_close(logits, segment_logits[:, (length - 1) % n], 1e-4, f'{what}: prompt of {length} tokens')
  brt.generate_ids(model, placed, [70], max_new_tokens=3, temperature=0.0)
  next_token = generation._programs(graphdef, 0.0, 0, 1.0, None, mesh)[1]  # pylint: disable=protected-access
  programs = (prefill.begin, prefill.segment, prefill.rest, next_token)
  sizes = [f._cache_size() for f in programs]  # pylint: disable=protected-access
  assert sizes == [1, 1, 1, 1], f'{what}: compilations of begin, segment, rest, next_token: {sizes}'
