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
from block_recurrent.model import attention, blocks, layers, recurrent

Array = jax.Array


class Layer(nnx.Module):

  def __init__(self, config: ModelConfig, kind: str, rngs: nnx.Rngs):
    d, h, hd, f = config.d_model, config.num_heads, config.head_dim, config.mlp_dim
    self.config = config
    self.kind = kind
    self.cross = kind in ('recurrent', 'feedback')
    sources = 2 if self.cross else 1
    self.attn_norm = layers.RMSNorm(d)
    for name, kernel in layers.attention_kernels(rngs, d, sources, h, config.key_heads, hd).items():
      setattr(self, name, kernel)  # qkv [d, 2 + sources, H, D] (K, V, Q[, Q2]), or kv and q (fewer K/V heads)
    self.out = layers.variance_scaling(rngs, (sources, h, hd, d), in_axis=(0, 1, 2))
    if config.normalize_keys:
      self.temperature = nnx.Param(jnp.ones((sources, h), jnp.float32))
    # T5 table: the reference's variance-scaling normal with fan-in = buckets (std 1/sqrt(32) ~ 0.177).
    self.relative_bias = layers.normal(rngs, (h, config.relative_buckets), 1.0 / math.sqrt(config.relative_buckets))
    self.ffn_norm = layers.RMSNorm(d)
    self.ffn_in = layers.variance_scaling(rngs, (d, f), in_axis=0)
    self.ffn_out = layers.variance_scaling(rngs, (f, d), in_axis=0)
    if kind == 'recurrent':
      self.state = recurrent.RecurrentState(config, rngs)

  def bias_matrix(self, window: int, gather: bool | None = None) -> Array:
    """T5 bias [H, W, 2W] for a block; computed once per layer per call, reused by every block.

    Small windows use a one-hot matmul (its gradient is a matmul too, not a slow scatter-add); from
    W = 1024 on, that one-hot constant (W x 2W x buckets floats: 256 MiB at W = 1024, 4 GiB at 4096) would
    swamp compilation, so the bias is gathered by distance instead (the same values)."""
    cfg = self.config
    if gather is None:
      gather = window * 2 * window * cfg.relative_buckets * 4 > 64 * 2 ** 20
    if gather:
      per_distance = self.relative_bias[...][:, attention.distance_buckets(
          2 * window, cfg.relative_buckets, cfg.relative_max_distance)]  # [H, 2W + 1]
      q = window + jax.lax.broadcasted_iota(jnp.int32, (window, 2 * window), 0)
      k = jax.lax.broadcasted_iota(jnp.int32, (window, 2 * window), 1)
      return per_distance[:, jnp.maximum(q - k, 0)]
    one_hot = attention.relative_one_hot(window, cfg.relative_buckets, cfg.relative_max_distance)
    return jnp.einsum('hn,qkn->hqk', self.relative_bias[...], one_hot)

  def _scale(self, source: int):
    if self.config.normalize_keys:
      return self.temperature[source]
    return 1.0 / math.sqrt(self.config.head_dim)

  # The pieces shared by the block form (__call__) and the segment form (segment).

  def _project(self, x_BxTxD: Array, dropout_key: Array | None):
    """q, k, v (and q2 for cross-attending layers), each [B, T, H, D], keys/queries L2-normalised."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    y = layers.dropout(self.attn_norm(x_BxTxD, dtype), cfg.dropout_rate, dropout_key)
    k, v, (q, *q2) = layers.keys_values_queries(y, self, dtype)
    if cfg.normalize_keys:
      k, q = attention.l2_normalize(k), attention.l2_normalize(q)
      q2 = [attention.l2_normalize(x) for x in q2]
    return q, k, v, (q2[0] if q2 else None)

  def _self_attention(self, q_BxWxHxD, kw_Bx2WxHxD, vw_Bx2WxHxD, key_valid_Bx2W, bias_HxWx2W, dropout_key):
    return attention.attend_window(q_BxWxHxD, kw_Bx2WxHxD, vw_Bx2WxHxD, key_valid_Bx2W, scale_H=self._scale(0),
                                   bias_HxWx2W=bias_HxWx2W, sub_blocks=self.config.attention_sub_blocks,
                                   scale_bias=self.config.normalize_keys, dropout_rate=self.config.dropout_rate, dropout_key=dropout_key)

  def _cross_attention(self, q2_BxWxHxD, state_proj: recurrent.StateProjections):
    return attention.attend(q2_BxWxHxD, state_proj.keys, state_proj.values, scale_H=self._scale(1))

  def _finish(self, x_BxTxD: Array, heads: list[Array], dropout_key: Array | None) -> Array:
    """Output projection of the concatenated heads, residual, then the FFN block."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    attn = jnp.stack(heads, axis=2)  # [B, T, sources, H, D]
    x = x_BxTxD + layers.project(attn, self.out, 'btnhk,nhkd->btd', dtype).astype(x_BxTxD.dtype)
    hidden = jax.nn.relu(layers.project(self.ffn_norm(x, dtype), self.ffn_in, 'btd,df->btf', dtype))
    ffn = layers.project(hidden, self.ffn_out, 'btf,fd->btd', dtype)
    return x + layers.dropout(ffn, cfg.dropout_rate, dropout_key).astype(x.dtype)

  def __call__(self, x_BxWxD: Array, k_prev: Array, v_prev: Array, prev_valid_B: Array,
               bias_HxWx2W: Array, *, state: Array | None = None,
               state_proj: recurrent.StateProjections | None = None,
               dropout_key: Array | None = None):
    """Block form: one block of W tokens. Returns (output, this block's keys, values, new state or None)."""
    k_pre, k_attn, k_ffn = layers.split_key(dropout_key, 3)
    q, k, v, q2 = self._project(x_BxWxD, k_pre)
    kw, vw, key_valid = (t[:, 0] for t in blocks.windows(k[:, None], v[:, None], k_prev, v_prev, prev_valid_B))
    heads = [self._self_attention(q, kw, vw, key_valid, bias_HxWx2W, k_attn)]
    new_state = None
    if self.cross:
      heads.append(self._cross_attention(q2, state_proj))
    if self.kind == 'recurrent':
      new_state = self.state.update(state, state_proj, kw, vw, key_valid[:, None, :])
    return self._finish(x_BxWxD, heads, k_ffn), k, v, new_state

  def token(self, x_Bx1xD: Array, keys_Bx2WxHxD: Array, values_Bx2WxHxD: Array, here_Bx2W: Array,
            bias_BxHx1x2W: Array, mask_Bx1x2W: Array, state_proj: recurrent.StateProjections | None = None):
    """Token form (model/decode.py): one token per row written into its slot of the 2W decode slots and
    attending with the block form's mask and bias rows. Returns (output, keys, values)."""
    q, k, v, q2 = self._project(x_Bx1xD, None)
    keys = jnp.where(here_Bx2W[:, :, None, None], k.astype(keys_Bx2WxHxD.dtype), keys_Bx2WxHxD)
    values = jnp.where(here_Bx2W[:, :, None, None], v.astype(values_Bx2WxHxD.dtype), values_Bx2WxHxD)
    heads = [attention.attend(q, keys, values, scale_H=self._scale(0), bias_HxQxK=bias_BxHx1x2W,
                              mask_BxQxK=mask_Bx1x2W, scale_bias=self.config.normalize_keys)]
    if self.cross:
      heads.append(self._cross_attention(q2, state_proj))
    return self._finish(x_Bx1xD, heads, None), keys, values

  def segment(self, x_BxNxD: Array, k_prev: Array, v_prev: Array, prev_valid_B: Array,
              bias_HxWx2W: Array, *, state: Array | None = None, dropout_key: Array | None = None,
              fresh_state: bool = False, stats: dict | None = None):
    """Segment form: all N/W blocks at once; only the state update runs block by block.

    Computes exactly what calling the block form once per block computes, with the projections, the
    token attention and the FFN batched over blocks (large matmuls) and a scan over blocks only for the
    recurrent state. Returns (output [B, N, d], last block's keys, values, final state or None).

    fresh_state: every block starts from the learned initial state instead of the carried one (the
    `reset_each_block` state ablation). stats: a dict that gets this layer's diagnostics (gate_open,
    state_change, state_share); not under remat.
    """
    if self.kind == 'feedback':
      raise ValueError('feedback layers need the block form: the state they read changes every block')
    cfg = self.config
    k_pre, k_attn, k_ffn = layers.split_key(dropout_key, 3)
    batch, n = x_BxNxD.shape[:2]
    q, k, v, q2 = self._project(x_BxNxD, k_pre)
    split = lambda t: blocks.by_block(t, cfg.window)  # [B, T, W, ...]
    fold = lambda t: t.reshape((batch * (n // cfg.window),) + t.shape[2:])  # [B*T, ...]
    kb, vb = split(k), split(v)
    kw, vw, key_valid = blocks.windows(kb, vb, k_prev, v_prev, prev_valid_B)  # [B, T, 2W, ...]
    heads = [self._self_attention(fold(split(q)), fold(kw), fold(vw), fold(key_valid), bias_HxWx2W,
                                  k_attn).reshape(q.shape)]
    new_state = None
    if self.kind == 'recurrent':
      initial = self.state.initial[...]

      def step(c, xs):
        kw_t, vw_t, valid_t = xs
        if fresh_state:
          c = jnp.broadcast_to(initial, c.shape).astype(c.dtype)
        proj = self.state.project(c)
        taken = [] if stats is not None else None
        new_c = self.state.update(c, proj, kw_t, vw_t, valid_t[:, None, :], taken)
        extra = () if stats is None else (jnp.mean(jnp.stack(taken))[None], _relative_change(c, new_c)[None])
        return new_c, (proj.keys, proj.values) + extra

      new_state, (ks, vs, *extra) = blocks.scan_along(step, state, (kw, vw, key_valid), axis=1,
                                                      unroll=cfg.unroll, scan_unroll=cfg.scan_unroll)
      if stats is not None:  # per block [1, T]: averaged over the segment's blocks
        stats['gate_open'], stats['state_change'] = jnp.mean(extra[0]), jnp.mean(extra[1])
      state_kv = recurrent.StateProjections(fold(ks), fold(vs), None, None)
      heads.append(self._cross_attention(fold(split(q2)), state_kv).reshape(q.shape))
    if stats is not None and self.cross:
      stats['state_share'] = self.state_share(heads)
    return self._finish(x_BxNxD, heads, k_ffn), kb[:, -1], vb[:, -1], new_state

  def state_share(self, heads: list[Array]) -> Array:
    """The state's share of the attention output, averaged over tokens: |o_state| / (|o_window| +
    |o_state|), o_* being each source's heads through its slice of the output projection. (Window and
    state have separate softmaxes, so there is no shared attention mass to split; this is what each
    contributes to the residual stream.)"""
    dtype = jnp.dtype(self.config.dtype)
    parts = layers.project(jnp.stack(heads, axis=2), self.out, 'btnhk,nhkd->btnd', dtype).astype(jnp.float32)
    norms = jnp.sqrt(jnp.sum(parts * parts, axis=-1))  # [B, T, sources]
    return jnp.mean(norms[..., 1] / jnp.maximum(norms[..., 0] + norms[..., 1], 1e-12))


def _relative_change(before_BxSxD: Array, after_BxSxD: Array) -> Array:
  """|c' - c| / |c| per row (Frobenius over states and channels), averaged over rows."""
  delta = jnp.sqrt(jnp.sum(jnp.square(after_BxSxD - before_BxSxD), axis=(1, 2)))
  return jnp.mean(delta / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(before_BxSxD), axis=(1, 2))), 1e-12))
