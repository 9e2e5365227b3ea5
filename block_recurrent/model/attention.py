r"""Attention math shared by every direction: window masks, T5 relative position buckets, attend().

Who attends to whom, for one block t of W tokens (B batch rows, H heads of size D, S states):

    tokens of block t-1 (or XL cache) --+
                                        +--> Kw, Vw  [B, 2W, H, D] --> token self-attention  (queries Q_t)
    tokens of block t  -----------------+                          \-> state cross-attention (queries Qs2)
    recurrent state c  [B, S, d] --> Ks, Vs [B, S, H, D] ----------> state self-attention  (queries Qs)
                                                          \--------> token cross-attention (queries Q2_t)

Only token self-attention gets the T5 bias and the sliding-window mask: query i (absolute position W+i
of the 2W keys) sees key j iff i <= j < W+i, i.e. exactly the W previous tokens and never itself.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from block_recurrent.model import layers

Array = jax.Array

_NEG = -1e30  # finite, so a fully masked row stays NaN-free before it is zeroed


@functools.lru_cache(maxsize=None)
def window_mask(window: int) -> np.ndarray:
  """bool [W, 2W]: query i sees keys i .. W+i-1 of (previous block ++ current block)."""
  i = np.arange(window)[:, None]
  j = np.arange(2 * window)[None, :]
  return (j >= i) & (j < i + window)


@functools.lru_cache(maxsize=None)
def distance_buckets(max_distance_seen: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """int32 [max_distance_seen + 1]: T5's unidirectional bucket of each query-to-key distance n >= 0.

  n < num_buckets/2 gets its own bucket, larger distances are log-spaced up to max_distance, and
  everything beyond shares the last bucket.
  """
  n = np.arange(max_distance_seen + 1)
  exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    log_ratio = np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact)
  large = exact + (log_ratio * (num_buckets - exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return np.where(n < exact, n, large).astype(np.int32)


@functools.lru_cache(maxsize=None)
def relative_buckets(window: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """int32 [W, 2W]: the bucket of the distance max(q - k, 0) from each query of a block (positions
  W .. 2W-1) to each key of (previous block ++ this block)."""
  q = window + np.arange(window)[:, None]
  k = np.arange(2 * window)[None, :]
  return distance_buckets(2 * window, num_buckets, max_distance)[np.maximum(q - k, 0)]


@functools.lru_cache(maxsize=None)
def relative_one_hot(window: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """float32 [W, 2W, num_buckets]: the buckets of relative_buckets() as one-hot vectors."""
  buckets = relative_buckets(window, num_buckets, max_distance)
  return (buckets[..., None] == np.arange(num_buckets)).astype(np.float32)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)
  return x32.astype(x.dtype)


def attend(q_BxQxHxD: Array, k_BxKxHxD: Array, v_BxKxHxD: Array, *, scale_H: Array | float,
           bias_HxQxK: Array | None = None, mask_BxQxK: Array | None = None, scale_bias: bool = True,
           dropout_rate: float = 0.0, dropout_key: Array | None = None) -> Array:
  """Softmax attention with logits = scale * (q.k + bias), or scale * q.k + bias when scale_bias is False
  (plain 1/sqrt(D) scaling, as the reference adds the T5 bias after it); the softmax runs in float32.

  k and v may have fewer heads G than q (H, a multiple of G): query head j reads key/value head j // (H/G).

  A query whose keys are all masked returns zeros (never NaN), so a document start without a previous
  block simply reads nothing from it. For speed the [B, H, Q, K] tensor is touched as few times as
  possible: the scale goes onto q (and the bias), and the softmax is normalised after the value matmul.
  """
  scale = jnp.asarray(scale_H, jnp.float32)
  scale_h = scale[:, None] if scale.ndim else scale
  if scale.ndim:
    scale_h = layers.broadcast_param(scale_h, q_BxQxHxD.shape[:2])
  q = (q_BxQxHxD.astype(jnp.float32) * scale_h).astype(q_BxQxHxD.dtype)
  # Heads-major operands make the batched matmuls contiguous (3x faster on XLA:CPU than letting the
  # dot transpose them itself); the transposes touch only [B, T, H, D] tensors. With G < H key/value
  # heads, the H / G query heads of a group are stacked along the rows of one matmul per group.
  b, num_q, h, _ = q.shape
  g = k_BxKxHxD.shape[2]
  if h % g:
    raise ValueError(f'{h} query heads cannot share {g} key/value heads: kv_heads must divide num_heads')
  heads_major = lambda t: jnp.transpose(t, (0, 2, 1, 3))
  grouped = lambda t: t.reshape((b, g, -1) + t.shape[3:])  # [B, H, Q, ...] -> [B, G, H/G * Q, ...]
  q, k, v = grouped(heads_major(q)), heads_major(k_BxKxHxD), heads_major(v_BxKxHxD)
  logits = _scores(q, k)
  logits = logits.reshape((b, h, num_q, -1))
  bias_scale = (scale[:, None, None] if scale.ndim else scale) if scale_bias else 1.0
  if bias_HxQxK is not None and bias_HxQxK.ndim == 4:  # [B, H, Q, K]: a bias per row (decoding)
    logits = logits + bias_HxQxK.astype(jnp.float32) * bias_scale
  elif bias_HxQxK is not None:
    bias = bias_HxQxK.astype(jnp.float32) * bias_scale
    logits = logits + layers.broadcast_param(bias, logits.shape[:1])
  if mask_BxQxK is not None:
    # Additive rather than a select: XLA:CPU fuses it ~3x better into the exp that follows.
    logits = logits + jnp.where(mask_BxQxK, 0.0, _NEG)[:, None]
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - top)
  total = jnp.sum(weights, axis=-1)  # [B, H, Q]
  if dropout_key is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = _weighted(grouped(weights), v)
  inv = 1.0 / total[..., None]  # [B, H, Q, 1]
  if mask_BxQxK is not None:
    inv = inv * jnp.any(mask_BxQxK, axis=-1)[:, None, :, None]
  return heads_major(out.reshape((b, h, num_q, -1)) * inv).astype(v_BxKxHxD.dtype)


def attend_window(q_BxWxHxD: Array, kw_Bx2WxHxD: Array, vw_Bx2WxHxD: Array, key_valid_Bx2W: Array, *,
                  scale_H: Array | float, bias_HxWx2W: Array | None, sub_blocks: int = 1,
                  scale_bias: bool = True, dropout_rate: float = 0.0, dropout_key: Array | None = None) -> Array:
  """A block's sliding-window self-attention: W queries over (previous block ++ this block), window_mask().

  With sub_blocks S > 1 the queries run in S groups of P = W / S, each over only the W + P keys its
  windows reach ((W + P) / 2W of the [W, 2W] scores; the rest are masked anyway). The mask and the T5 bias
  depend on the query-to-key distance alone, so every group shares the first group's slices of them.
  The result equals S = 1 up to float rounding (the same unmasked terms, summed in another order).
  """
  batch, window = q_BxWxHxD.shape[:2]
  if sub_blocks <= 1 or window % sub_blocks:
    mask = window_mask(window)[None] & key_valid_Bx2W[:, None, :]
    return attend(q_BxWxHxD, kw_Bx2WxHxD, vw_Bx2WxHxD, scale_H=scale_H, bias_HxQxK=bias_HxWx2W,
                  mask_BxQxK=mask, scale_bias=scale_bias, dropout_rate=dropout_rate, dropout_key=dropout_key)
  part = window // sub_blocks
  chunks = 2 * sub_blocks  # of P keys each; group g reads chunks g .. g + S

  def windows(t):  # [B, 2W, ...] -> [B * S, W + P, ...]
    t = t.reshape((batch, chunks, part) + t.shape[2:])
    t = jnp.stack([t[:, g:g + sub_blocks + 1] for g in range(sub_blocks)], axis=1)
    return t.reshape((batch * sub_blocks, window + part) + t.shape[4:])

  mask = window_mask(window)[:part, :window + part][None] & windows(key_valid_Bx2W)[:, None, :]
  bias = None if bias_HxWx2W is None else bias_HxWx2W[:, :part, :window + part]
  out = attend(q_BxWxHxD.reshape((batch * sub_blocks, part) + q_BxWxHxD.shape[2:]), windows(kw_Bx2WxHxD),
               windows(vw_Bx2WxHxD), scale_H=scale_H, bias_HxQxK=bias, mask_BxQxK=mask, scale_bias=scale_bias,
               dropout_rate=dropout_rate, dropout_key=dropout_key)
  return out.reshape((batch, window) + out.shape[2:])


# The two products of attention, with backward passes written for XLA:CPU. Left to autodiff, the key and
# value gradients (sum over queries of [Q, K] x [Q, D]) become batched dots contracting both operands'
# leading axis, which XLA:CPU runs at ~30 GFLOP/s for [128, 256] x [128, 32] heads; computed as
# [D, Q] x [Q, K] and transposed after an optimization barrier (else XLA folds the transpose back into
# the dot) they run ~1.7x faster. Operands are cast to q's / v's dtype (the compute dtype), products
# accumulate in float32, and with bfloat16 operands the backward matmuls take bfloat16 operands too.


def _leading_transposed(x: Array) -> Array:
  """x [..., A, B] computed by a dot, as [..., B, A], with the transpose kept out of the dot."""
  return jnp.swapaxes(jax.lax.optimization_barrier(x), -1, -2)


def _scores(q_BxGxQxD: Array, k_BxGxKxD: Array) -> Array:
  """float32 logits [B, G, Q, K] = q . k over D, in q's dtype."""
  return _product(True, q_BxGxQxD.dtype, q_BxGxQxD, k_BxGxKxD)


def _weighted(w_BxGxQxK: Array, v_BxGxKxD: Array) -> Array:
  """float32 [B, G, Q, D] = sum over keys of weights x values, in v's dtype."""
  return _product(False, v_BxGxKxD.dtype, w_BxGxQxK, v_BxGxKxD)


_SPECS = {True: 'bgqd,bgkd->bgqk', False: 'bgqk,bgkd->bgqd'}  # by contract_d; b is [K, D] either way


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _product(contract_d: bool, dtype, a: Array, b: Array) -> Array:
  """a [B, G, Q, X] times b [B, G, K, D] on operands cast to dtype, in float32: contracting D (the scores,
  X = D) or K (the weighted values, X = K). b's gradient [K, D] is computed as [D, Q] x [Q, K], transposed."""
  return jnp.einsum(_SPECS[contract_d], a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _product_fwd(contract_d, dtype, a, b):
  return (_product(contract_d, dtype, a, b),
          (a.astype(dtype), b.astype(dtype), jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype)))


def _product_bwd(contract_d, dtype, res, g):
  a, b, a_like, b_like = res
  g = g.astype(dtype)
  # a's gradient is the other product of g with b; b's sums over queries: [D, Q] x [Q, K], transposed.
  da = jnp.einsum(_SPECS[not contract_d], g, b, preferred_element_type=jnp.float32)
  left, right = (a, g) if contract_d else (g, a)
  db = _leading_transposed(jnp.einsum('bgdq,bgqk->bgdk', jnp.swapaxes(left, -1, -2), right,
                                      preferred_element_type=jnp.float32))
  return da.astype(a_like.dtype), db.astype(b_like.dtype)


_product.defvjp(_product_fwd, _product_bwd)
