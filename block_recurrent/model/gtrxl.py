"""GTrXL's attention (Parisotto et al. 2020): Transformer-XL relative attention over a memory of the last M
tokens, with a true key/value cache, behind the same contract as the linear recurrent layers:
`init_state(batch)`, `layer(x_BxTxD, state, reset_BxT) -> (y, new_state)`. Wrap it in
linear_recurrent.GatedBlock for the GRU gates and the identity-map (pre-norm) reordering.

Scores (Dai et al. 2019), for query i and key j at distance n = i - j >= 0, with R_n sinusoidal:
    q_i . k_j + q_i . W_R R_n + u . k_j + v . W_R R_n
Keys and values depend only on their own token, so caching them equals caching the layer inputs and
recomputing (what the reference does every step) at a fraction of the cost.

Masks: 'step' lets token t of a segment see exactly what the step form sees: itself and the M tokens
before it. 'xl' is Transformer-XL's training mask: the whole memory plus every earlier token of the
segment, M + t + 1 keys, so a T-token training segment sees more than the step form ever does.
A reset at t hides every key before t from t on.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent.model import layers
from block_recurrent.model.carry import CacheState

Array = jax.Array


def sinusoids(distances: np.ndarray, dim: int) -> np.ndarray:
  inv = 1.0 / (10000 ** (np.arange(0, dim, 2) / dim))
  angle = distances[..., None] * inv
  return np.concatenate([np.sin(angle), np.cos(angle)], axis=-1).astype(np.float32)


class GTrXLAttention(nnx.Module):

  def __init__(self, d_model: int, num_heads: int, head_dim: int, memory: int, rngs: nnx.Rngs, *,
               mask: str = 'step'):
    if mask not in ('step', 'xl'):
      raise ValueError(f"GTrXL mask must be 'step' or 'xl', got {mask!r}")
    self.d_model, self.num_heads, self.head_dim, self.memory, self.mask = d_model, num_heads, head_dim, memory, mask
    self.qkv = layers.variance_scaling(rngs, (d_model, 3, num_heads, head_dim), in_axis=0)
    self.rel = layers.variance_scaling(rngs, (d_model, num_heads, head_dim), in_axis=0)
    self.u = nnx.Param(jnp.zeros((num_heads, head_dim), jnp.float32))
    self.v = nnx.Param(jnp.zeros((num_heads, head_dim), jnp.float32))
    self.out = layers.variance_scaling(rngs, (num_heads, head_dim, d_model), in_axis=(0, 1))

  def init_state(self, batch: int) -> CacheState:
    shape = (batch, self.memory, self.num_heads, self.head_dim)
    return CacheState(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32),
                      jnp.zeros((batch, self.memory), bool))

  def __call__(self, x_BxTxD: Array, state: CacheState, reset_BxT: Array):
    B, T, _ = x_BxTxD.shape
    M = self.memory
    q, k, v = jnp.unstack(jnp.einsum('btd,dnhk->nbthk', x_BxTxD.astype(jnp.float32), self.qkv[...]))
    keys = jnp.concatenate([state.keys, k], axis=1)  # [B, M+T, H, Dh]
    values = jnp.concatenate([state.values, v], axis=1)
    reset = jnp.asarray(reset_BxT, bool)
    # Episode index of every key and query: a reset starts a new one; cache slots of another episode
    # (or empty) are invalid.
    episode = jnp.concatenate([jnp.zeros((B, M), jnp.int32), jnp.cumsum(reset.astype(jnp.int32), axis=1)], 1)
    key_ok = jnp.concatenate([state.valid, jnp.ones((B, T), bool)], axis=1)
    i = M + np.arange(T)[:, None]
    j = np.arange(M + T)[None, :]
    window = (j <= i) & (j >= i - M) if self.mask == 'step' else (j <= i)
    visible = (window[None] & key_ok[:, None, :]
               & (episode[:, None, :] == episode[:, M:, None]))  # [B, T, M+T]
    dist = np.maximum(i - j, 0)
    content = jnp.einsum('bqhe,bkhe->bhqk', q + self.u[...], keys)
    # (q + v) . (W_R R_n) computed as ((q + v) W_R^T) . R_n: O(d) per key instead of O(d * H * Dh).
    q_rel = jnp.einsum('bqhe,dhe->bqhd', q + self.v[...], self.rel[...])
    position = jnp.einsum('bqhd,qkd->bhqk', q_rel, jnp.asarray(sinusoids(dist, self.d_model)))
    scale = 1.0 / np.sqrt(self.head_dim)
    logits = (content + position) * scale + jnp.where(visible, 0.0, -1e30)[:, None]
    weights = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum('bhqk,bkhe->bqhe', weights, values)
    y = jnp.einsum('bqhe,hed->bqd', o, self.out[...])
    # The next cache: the last M keys; those before the segment's last reset belong to an old episode.
    last_episode = episode[:, -1:]
    new_valid = (key_ok & (episode == last_episode))[:, -M:]
    return y, CacheState(keys[:, -M:], values[:, -M:], new_valid)

