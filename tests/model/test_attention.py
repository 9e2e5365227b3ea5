"""Attention math: the window mask, T5 buckets, and the masked-softmax edge cases (per layer, 1e-5)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from block_recurrent.model import attention


@given(st.integers(1, 40))
@settings(max_examples=25, deadline=None)
def test_window_mask_sees_exactly_the_previous_w_tokens(w):
  mask = attention.window_mask(w)
  assert mask.shape == (w, 2 * w)
  for i in range(w):
    query = w + i  # absolute position of query i among the 2W keys
    visible = np.nonzero(mask[i])[0]
    np.testing.assert_array_equal(visible, np.arange(query - w, query))
    assert not mask[i, query] if query < 2 * w else True  # never itself


def _t5_bucket(n, num_buckets=32, max_distance=128):
  """T5's unidirectional bucket, written out scalar by scalar as an independent reference."""
  exact = num_buckets // 2
  if n < exact:
    return n
  value = exact + int(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
  return min(value, num_buckets - 1)


def test_relative_buckets_match_t5():
  w = 200
  buckets = attention.relative_buckets(w)
  for i in (0, 1, 7, 15, 16, 100, 199):
    for j in range(2 * w):
      assert buckets[i, j] == _t5_bucket(max(w + i - j, 0)), (i, j)
  assert buckets.max() == 31 and set(np.unique(buckets)) == set(range(32))


def test_token_never_attends_to_itself():
  w, h, d = 4, 2, 8
  k = jax.random.normal(jax.random.key(0), (1, 2 * w, h, d))
  v = jax.random.normal(jax.random.key(1), (1, 2 * w, h, d))
  q = jax.random.normal(jax.random.key(2), (1, w, h, d))
  mask = jnp.asarray(attention.window_mask(w))[None]
  for i in range(w):
    jac = jax.grad(lambda v: attention.attend(q, k, v, scale_H=1.0, mask_BxQxK=mask)[0, i].sum())(v)
    per_key = np.abs(np.asarray(jac[0])).sum(axis=(1, 2))
    assert per_key[w + i] == 0.0  # its own value
    assert np.all(per_key[i:w + i] > 0) and np.all(per_key[w + i:] == 0) and np.all(per_key[:i] == 0)


def test_fully_masked_row_gives_zeros_not_nan():
  q = jax.random.normal(jax.random.key(0), (2, 3, 2, 4))
  k = jax.random.normal(jax.random.key(1), (2, 5, 2, 4))
  v = jax.random.normal(jax.random.key(2), (2, 5, 2, 4))
  mask = np.ones((2, 3, 5), bool)
  mask[0, 1] = False  # one query of row 0 sees nothing
  mask[1] = False  # nothing at all for row 1
  out = attention.attend(q, k, v, scale_H=jnp.ones(2), mask_BxQxK=mask)
  assert np.all(np.isfinite(np.asarray(out)))
  np.testing.assert_array_equal(np.asarray(out[0, 1]), 0.0)
  np.testing.assert_array_equal(np.asarray(out[1]), 0.0)
  assert np.abs(np.asarray(out[0, 0])).sum() > 0
  grads = jax.grad(lambda q, k, v: attention.attend(q, k, v, scale_H=jnp.ones(2), mask_BxQxK=mask).sum(),
                   argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_attend_matches_plain_softmax_attention():
  q = jax.random.normal(jax.random.key(3), (1, 3, 2, 4))
  k = jax.random.normal(jax.random.key(4), (1, 6, 2, 4))
  v = jax.random.normal(jax.random.key(5), (1, 6, 2, 4))
  bias = jax.random.normal(jax.random.key(6), (2, 3, 6))
  tau = jnp.array([0.5, 2.0])
  out = attention.attend(q, k, v, scale_H=tau, bias_HxQxK=bias)
  logits = (np.einsum('qhd,khd->hqk', q[0], k[0]) + np.asarray(bias)) * np.asarray(tau)[:, None, None]
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out[0]), np.einsum('hqk,khd->qhd', probs, v[0]), atol=1e-5)


def test_l2_normalize_unit_norm():
  x = jax.random.normal(jax.random.key(7), (3, 5, 16)) * 10
  norms = np.linalg.norm(np.asarray(attention.l2_normalize(x)), axis=-1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-5)


@pytest.mark.parametrize('window', [8, 20])
def test_t5_bias_by_gather_equals_the_one_hot_matmul_values_and_gradients(window):
  """Large windows gather the bias by distance (the one-hot constant would be GiBs); same numbers."""
  from flax import nnx

  import block_recurrent as brt
  from block_recurrent.model import transformer
  cfg = brt.ModelConfig(vocab_size=260, num_layers=2, d_model=32, num_heads=2, head_dim=16, mlp_dim=64,
                        window=window, segment_length=2 * window, relative_buckets=8, relative_max_distance=24)
  layer = transformer.Layer(cfg, 'plain', nnx.Rngs(0))
  weights = jax.random.normal(jax.random.key(1), (cfg.num_heads, window, 2 * window))

  graphdef, state = nnx.split(layer)

  def loss(state, gather):
    return jnp.sum(weights * nnx.merge(graphdef, state).bias_matrix(window, gather=gather))

  one_hot, gathered = layer.bias_matrix(window, gather=False), layer.bias_matrix(window, gather=True)
  assert gathered.shape == (cfg.num_heads, window, 2 * window)
  np.testing.assert_array_equal(np.asarray(gathered), np.asarray(one_hot))
  g1, g2 = jax.grad(loss)(state, False), jax.grad(loss)(state, True)
  assert float(jnp.max(jnp.abs(g1['relative_bias'][...]))) > 0
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('heads,kv_heads', [(2, 2), (4, 2)])
def test_attend_gradients_equal_autodiff_of_plain_attention(heads, kv_heads):
  """attend's hand-written backward products (key and value gradients computed transposed) give the
  gradients that autodiff of the textbook formula gives, for every input, with a bias and a mask."""
  ks = jax.random.split(jax.random.key(11), 6)
  q = jax.random.normal(ks[0], (2, 5, heads, 4))
  k = jax.random.normal(ks[1], (2, 7, kv_heads, 4))
  v = jax.random.normal(ks[2], (2, 7, kv_heads, 4))
  bias = jax.random.normal(ks[3], (heads, 5, 7))
  tau = jnp.linspace(0.5, 2.0, heads)
  mask = jax.random.bernoulli(ks[4], 0.7, (2, 5, 7)).at[0, 0].set(False)  # one row with no keys at all
  cotangent = jax.random.normal(ks[5], (2, 5, heads, 4))

  def plain(q, k, v, tau, bias):
    kk, vv = (jnp.repeat(t, heads // kv_heads, axis=2) for t in (k, v))
    logits = (jnp.einsum('bqhd,bkhd->bhqk', q, kk) + bias) * tau[:, None, None]
    logits = jnp.where(mask[:, None], logits, -jnp.inf)
    probs = jnp.nan_to_num(jax.nn.softmax(logits, axis=-1))  # the fully masked row reads zeros
    return jnp.einsum('bhqk,bkhd->bqhd', probs, vv)

  ours = lambda q, k, v, tau, bias: attention.attend(q, k, v, scale_H=tau, bias_HxQxK=bias, mask_BxQxK=mask)
  loss = lambda f: lambda *xs: jnp.sum(f(*xs) * cotangent)
  args = (q, k, v, tau, bias)
  np.testing.assert_allclose(np.asarray(ours(*args)), np.asarray(plain(*args)), atol=1e-5)
  got = jax.jit(jax.grad(loss(ours), argnums=range(5)))(*args)
  want = jax.jit(jax.grad(loss(plain), argnums=range(5)))(*args)
  for name, g, w in zip(('q', 'k', 'v', 'temperature', 'bias'), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, err_msg=name)


@pytest.mark.parametrize('sub_blocks,kv_heads', [(2, 4), (4, 2), (8, 1), (3, 4)])
def test_sub_blocked_window_attention_equals_one_block_values_and_gradients(sub_blocks, kv_heads):
  """attend_window in S query groups (each over only the W + W/S keys its windows reach) gives what one
  [W, 2W] product gives, for the output and every gradient, with a T5-like bias that varies along both
  axes and a row whose previous block is invalid (a document start). S = 3 does not divide W = 8: the
  one-block path runs, so it must match trivially."""
  w, heads = 8, 4
  ks = jax.random.split(jax.random.key(5), 6)
  q = jax.random.normal(ks[0], (3, w, heads, 4))
  kw = jax.random.normal(ks[1], (3, 2 * w, kv_heads, 4))
  vw = jax.random.normal(ks[2], (3, 2 * w, kv_heads, 4))
  # A bias of the query-to-key distance alone, as the T5 bias is (what the groups' shared slice relies on).
  per_distance = jax.random.normal(ks[3], (heads, 2 * w + 1))
  bias = per_distance[:, w + np.arange(w)[:, None] - np.arange(2 * w)[None, :]]
  tau = jnp.linspace(0.5, 2.0, heads)
  valid = np.ones((3, 2 * w), bool)
  valid[1, :w] = False  # lane 1 starts a document: nothing before this block
  cotangent = jax.random.normal(ks[4], (3, w, heads, 4))

  def run(s):
    def f(q, kw, vw, tau, per_distance):
      b = per_distance[:, w + np.arange(w)[:, None] - np.arange(2 * w)[None, :]]
      return attention.attend_window(q, kw, vw, valid, scale_H=tau, bias_HxWx2W=b, sub_blocks=s)
    out = f(q, kw, vw, tau, per_distance)
    grads = jax.grad(lambda *xs: jnp.sum(f(*xs) * cotangent), argnums=range(5))(q, kw, vw, tau, per_distance)
    return out, grads

  (one, one_grads), (sub, sub_grads) = jax.jit(lambda: run(1))(), jax.jit(lambda: run(sub_blocks))()
  assert float(jnp.max(jnp.abs(one))) > 0.1 and bias.shape == (heads, w, 2 * w)
  np.testing.assert_allclose(np.asarray(sub), np.asarray(one), atol=1e-5)
  for name, g, want in zip(('q', 'keys', 'values', 'temperature', 'bias'), sub_grads, one_grads):
    assert float(jnp.max(jnp.abs(want))) > 0, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(want), atol=1e-5, err_msg=name)


def test_attention_sub_blocks_must_divide_the_window():
  import block_recurrent as brt  # pylint: disable=import-outside-toplevel
  import helpers  # pylint: disable=import-outside-toplevel
  with pytest.raises(brt.ConfigError, match='attention_sub_blocks 3 does not divide window 8'):
    helpers.config('slide', attention_sub_blocks=3)
  assert helpers.config('slide', attention_sub_blocks=8).attention_sub_blocks == 8


@pytest.mark.parametrize('normalize_keys', [False, True])
def test_token_self_attention_adds_the_t5_bias_as_the_reference_does(normalize_keys):
  """Plain scaling: q.k / sqrt(D) + bias (the reference's; the bias is not scaled). L2-normalised keys and
  queries (the paper's setting): tau * (q.k + bias). Checked on a layer's window attention against a
  direct computation, with and without sub-blocked attention."""
  from flax import nnx

  import block_recurrent as brt
  from block_recurrent.model import transformer
  window, heads, dim = 4, 2, 8
  for sub_blocks in (1, 2):
    cfg = brt.ModelConfig(vocab_size=260, num_layers=2, d_model=16, num_heads=heads, head_dim=dim, mlp_dim=32,
                          window=window, segment_length=2 * window, normalize_keys=normalize_keys,
                          attention_sub_blocks=sub_blocks)
    layer = transformer.Layer(cfg, 'plain', nnx.Rngs(0))
    layer.relative_bias[...] = jax.random.normal(jax.random.key(2), layer.relative_bias.shape) * 3.0
    if normalize_keys:
      layer.temperature[...] = jnp.array([[0.7, 1.9]])
    q = jax.random.normal(jax.random.key(3), (1, window, heads, dim))
    k = jax.random.normal(jax.random.key(4), (1, 2 * window, heads, dim))
    v = jax.random.normal(jax.random.key(5), (1, 2 * window, heads, dim))
    valid = jnp.array([[False] + [True] * (2 * window - 1)])
    bias = layer.bias_matrix(window)
    out = layer._self_attention(q, k, v, valid, bias, None)  # pylint: disable=protected-access

    dots = np.einsum('qhd,khd->hqk', np.asarray(q[0], np.float64), np.asarray(k[0], np.float64))
    if normalize_keys:
      logits = (dots + np.asarray(bias)) * np.array([0.7, 1.9])[:, None, None]
    else:
      logits = dots / math.sqrt(dim) + np.asarray(bias)
    mask = attention.window_mask(window) & np.asarray(valid[0])[None]
    logits = np.where(mask[None], logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.einsum('hqk,khd->qhd', probs, np.asarray(v[0], np.float64))
    np.testing.assert_allclose(np.asarray(out[0]), expected, atol=1e-5)
