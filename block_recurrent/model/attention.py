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

Array = jax.Array

_NEG = -1e30  # finite, so a fully masked row stays NaN-free before it is zeroed


@functools.lru_cache(maxsize=None)
def window_mask(window: int) -> np.ndarray:
  """bool [W, 2W]: query i sees keys i .. W+i-1 of (previous block ++ current block)."""
  i = np.arange(window)[:, None]
  j = np.arange(2 * window)[None, :]
  return (j >= i) & (j < i + window)


@functools.lru_cache(maxsize=None)
def relative_buckets(window: int, num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """int32 [W, 2W]: T5's unidirectional bucket of the distance from each query to each key.

  Distance n = max(q - k, 0); n < num_buckets/2 gets its own bucket, larger distances are log-spaced up to
  max_distance, and everything beyond shares the last bucket.
  """
  q = window + np.arange(window)[:, None]
  k = np.arange(2 * window)[None, :]
  n = np.maximum(q - k, 0)
  exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    log_ratio = np.log(np.maximum(n, 1) / exact) / np.log(max_distance / exact)
  large = exact + (log_ratio * (num_buckets - exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return np.where(n < exact, n, large).astype(np.int32)


def l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)
  return x32.astype(x.dtype)


def attend(q_BxQxHxD: Array, k_BxKxHxD: Array, v_BxKxHxD: Array, *, scale_H: Array | float,
           bias_HxQxK: Array | None = None, mask_BxQxK: Array | None = None,
           dropout_rate: float = 0.0, dropout_key: Array | None = None) -> Array:
  """Softmax attention, logits = scale * (q.k + bias), softmax in float32.

  A query whose keys are all masked returns zeros (never NaN), so a document start without a previous
  block simply reads nothing from it.
  """
  logits = jnp.einsum('bqhd,bkhd->bhqk', q_BxQxHxD, k_BxKxHxD, preferred_element_type=jnp.float32)
  if bias_HxQxK is not None:
    logits = logits + bias_HxQxK.astype(jnp.float32)
  scale = jnp.asarray(scale_H, jnp.float32)
  logits = logits * (scale[None, :, None, None] if scale.ndim else scale)
  if mask_BxQxK is not None:
    mask = mask_BxQxK[:, None]
    logits = jnp.where(mask, logits, _NEG)
  probs = jax.nn.softmax(logits, axis=-1)
  if mask_BxQxK is not None:
    probs = probs * jnp.any(mask, axis=-1, keepdims=True)
  if dropout_key is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  return jnp.einsum('bhqk,bkhd->bqhd', probs.astype(v_BxKxHxD.dtype), v_BxKxHxD)
