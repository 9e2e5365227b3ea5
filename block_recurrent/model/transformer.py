"""One pre-norm transformer layer applied to one block of W tokens.

Every layer uses sliding-window attention over (previous block ++ this block) with the T5 bias. A
'recurrent' layer also owns a RecurrentState and cross-attends to it with a second query; a 'feedback'
layer (Feedback:*) cross-attends to the recurrent layer's state the same way, without owning one. Cross
results are concatenated with self-attention over heads and projected back to d by one matrix.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from block_recurrent.configs import ModelConfig
from block_recurrent.model import attention, layers, recurrent

Array = jax.Array


class Layer(nnx.Module):

  def __init__(self, config: ModelConfig, kind: str, rngs: nnx.Rngs):
    d, h, hd, f = config.d_model, config.num_heads, config.head_dim, config.mlp_dim
    self.config = config
    self.kind = kind
    self.cross = kind in ('recurrent', 'feedback')
    sources = 2 if self.cross else 1
    self.attn_norm = layers.RMSNorm(d)
    self.qkv = layers.variance_scaling(rngs, (d, 2 + sources, h, hd), in_axis=0)  # K, V, Q[, Q2]
    self.out = layers.variance_scaling(rngs, (sources, h, hd, d), in_axis=(0, 1, 2))
    if config.normalize_keys:
      self.temperature = nnx.Param(jnp.ones((sources, h), jnp.float32))
    self.relative_bias = layers.normal(rngs, (h, config.relative_buckets), 0.1)
    self.ffn_norm = layers.RMSNorm(d)
    self.ffn_in = layers.variance_scaling(rngs, (d, f), in_axis=0)
    self.ffn_out = layers.variance_scaling(rngs, (f, d), in_axis=0)
    if kind == 'recurrent':
      self.state = recurrent.RecurrentState(config, rngs)

  def bias_matrix(self, window: int) -> Array:
    """T5 bias [H, W, 2W] for a block; computed once per layer per call, reused by every block."""
    one_hot = attention.relative_one_hot(window, self.config.relative_buckets,
                                         self.config.relative_max_distance)
    # A one-hot matmul rather than a gather: its gradient is a matmul too, not a slow scatter-add.
    return jnp.einsum('hn,qkn->hqk', self.relative_bias[...], one_hot)

  def _scale(self, source: int):
    if self.config.normalize_keys:
      return self.temperature[source]
    return 1.0 / math.sqrt(self.config.head_dim)

  def __call__(self, x_BxWxD: Array, k_prev: Array, v_prev: Array, prev_valid_B: Array,
               bias_HxWx2W: Array, *, state: Array | None = None,
               state_proj: recurrent.StateProjections | None = None,
               dropout_key: Array | None = None):
    """Returns (output block, this block's keys, values, new state or None)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    rate = cfg.dropout_rate
    k_pre, k_attn, k_ffn = layers.split_key(dropout_key, 3)
    window = x_BxWxD.shape[1]

    y = layers.dropout(self.attn_norm(x_BxWxD, dtype), rate, k_pre)
    proj = jnp.unstack(layers.project(y, self.qkv, 'bwd,dnhk->nbwhk', dtype))
    k, v, q = proj[:3]
    if cfg.normalize_keys:
      k, q = attention.l2_normalize(k), attention.l2_normalize(q)
    kw = jnp.concatenate([k_prev.astype(dtype), k], axis=1)
    vw = jnp.concatenate([v_prev.astype(dtype), v], axis=1)
    key_valid_Bx2W = jnp.concatenate(
        [jnp.broadcast_to(prev_valid_B[:, None], (x_BxWxD.shape[0], window)),
         jnp.ones((x_BxWxD.shape[0], window), bool)], axis=1)
    mask = attention.window_mask(window)[None] & key_valid_Bx2W[:, None, :]
    heads = [attention.attend(q, kw, vw, scale_H=self._scale(0), bias_HxQxK=bias_HxWx2W, mask_BxQxK=mask,
                              dropout_rate=rate, dropout_key=k_attn)]

    new_state = None
    if self.cross:
      q2 = attention.l2_normalize(proj[3]) if cfg.normalize_keys else proj[3]
      heads.append(attention.attend(q2, state_proj.keys, state_proj.values, scale_H=self._scale(1)))
    if self.kind == 'recurrent':
      new_state = self.state.update(state, state_proj, kw, vw, key_valid_Bx2W[:, None, :])

    attn = jnp.stack(heads, axis=2)  # [B, W, sources, H, D]
    x = x_BxWxD + layers.project(attn, self.out, 'bwnhk,nhkd->bwd', dtype).astype(x_BxWxD.dtype)
    hidden = jax.nn.relu(layers.project(self.ffn_norm(x, dtype), self.ffn_in, 'bwd,df->bwf', dtype))
    ffn = layers.project(hidden, self.ffn_out, 'bwf,fd->bwd', dtype)
    x = x + layers.dropout(ffn, rate, k_ffn).astype(x.dtype)
    return x, k, v, new_state
