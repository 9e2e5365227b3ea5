"""The state side of the block-recurrent layer: S state vectors read and written once per block.

Per block, with c the carried state [B, S, d] (float32):
    c_hat = RMSNorm_s(c) + P                       # P: learned state IDs, never stored into c
    Ks, Vs, Qs, Qs2 = c_hat @ W                    # [B, S, H, D]
    h = concat(attend(Qs, Ks, Vs), attend(Qs2, Kw, Vw))   # states read themselves and the 2W tokens
    c' = state_update(c, h)                        # a gate and a wiring, below
Tokens read (Ks, Vs) of the state *before* this block's update; that happens in the token layer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from block_recurrent.configs import ModelConfig
from block_recurrent.model import attention, layers

Array = jax.Array


class StateProjections(NamedTuple):
  keys: Array  # [B, S, H, D]
  values: Array
  queries: Array
  cross_queries: Array


class FixedGate(nnx.Module):
  """c' = g*c + (1-g)*z with g = sigmoid(b): a learned per-channel moving average over blocks."""

  def __init__(self, d_model: int, rngs: nnx.Rngs, keep_bias: float | None = None):
    self.bias = layers.normal(rngs, (d_model,), 0.1)
    if keep_bias is not None:  # ModelConfig.state_gate_bias
      self.bias[...] = self.bias[...] + keep_bias

  def weights(self, y: Array):
    """(keep, take): what c' keeps of c and takes of z."""
    del y
    g = jax.nn.sigmoid(self.bias[...])
    return g, 1.0 - g

  def __call__(self, c: Array, z: Array, y: Array, taken: list | None = None) -> Array:
    return _gated(self.weights(y), c, z, taken)


class LSTMGate(nnx.Module):
  """c' = f*c + i*z, f = sigmoid(W_f y + b_f + 1), i = sigmoid(W_i y + b_i - 1)."""

  def __init__(self, d_model: int, input_dim: int, rngs: nnx.Rngs, keep_bias: float | None = None):
    self.kernel = layers.variance_scaling(rngs, (input_dim, 2, d_model), in_axis=0, scale=0.1)
    self.bias = layers.normal(rngs, (2, d_model), 0.1)
    if keep_bias is not None:  # ModelConfig.state_gate_bias: the forget half
      self.bias[...] = self.bias[...].at[0].add(keep_bias)

  def weights(self, y: Array):
    """(keep, take) = (forget, input) gates, [B, S, d]."""
    pre = layers.product('bsy,yge->bsge', y, self.kernel[...], y.dtype) + self.bias[...]
    return jax.nn.sigmoid(pre[:, :, 0] + 1.0), jax.nn.sigmoid(pre[:, :, 1] - 1.0)

  def __call__(self, c: Array, z: Array, y: Array, taken: list | None = None) -> Array:
    return _gated(self.weights(y), c, z, taken)


def _gated(weights, c: Array, z: Array, taken: list | None) -> Array:
  """keep * c + take * z; `taken` (a list, for the diagnostics) gets the mean of take: the gate's openness."""
  keep, take = weights
  if taken is not None:
    taken.append(jnp.mean(take.astype(jnp.float32)))
  return keep * c + take * z.astype(jnp.float32)


def make_gate(config: ModelConfig, input_dim: int, rngs: nnx.Rngs) -> nnx.Module:
  if config.gate == 'fixed':
    return FixedGate(config.d_model, rngs, config.state_gate_bias)
  return LSTMGate(config.d_model, input_dim, rngs, config.state_gate_bias)


class RecurrentState(nnx.Module):
  """Parameters and per-block update of the recurrent state of one layer."""

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    d, h, hd, f = config.d_model, config.num_heads, config.head_dim, config.mlp_dim
    self.config = config
    self.initial = layers.normal(rngs, (config.num_states, d), 0.1)
    self.ids = layers.normal(rngs, (config.num_states, d), 1.0)
    self.norm = layers.RMSNorm(d)
    for name, kernel in layers.attention_kernels(rngs, d, 2, h, config.key_heads, hd).items():
      setattr(self, name, kernel)  # qkv [d, 4, H, D] (Ks, Vs, Qs, Qs2), or kv and q (fewer K/V heads)
    if config.normalize_keys:
      self.temperature = nnx.Param(jnp.ones((2, h), jnp.float32))  # self, cross
    two_hd = 2 * h * hd
    if config.wiring in ('skip', 'dual'):
      self.out = layers.variance_scaling(rngs, (2, h, hd, d), in_axis=(0, 1, 2))
      self.gate = make_gate(config, two_hd, rngs)
    if config.wiring == 'dual':
      self.ffn_norm = layers.RMSNorm(d)
      self.ffn_in = layers.variance_scaling(rngs, (d, f), in_axis=0)
      self.ffn_out = layers.variance_scaling(rngs, (f, d), in_axis=0)
      self.gate2 = make_gate(config, f, rngs)
    if config.wiring == 'single':
      self.ffn_in = layers.variance_scaling(rngs, (2, h, hd, f), in_axis=(0, 1, 2))
      self.ffn_out = layers.variance_scaling(rngs, (f, d), in_axis=0)
      self.gate = make_gate(config, f, rngs)

  @property
  def dtype(self):
    return jnp.dtype(self.config.dtype)

  def _scales(self):
    if self.config.normalize_keys:
      return self.temperature[0], self.temperature[1]
    plain = 1.0 / math.sqrt(self.config.head_dim)
    return plain, plain

  def project(self, c_BxSxD: Array) -> StateProjections:
    """Keys, values and queries of the state; they depend only on the carried state."""
    c_hat = self.norm(c_BxSxD) + layers.broadcast_param(self.ids[...], c_BxSxD.shape[:1])
    k, v, (q, q2) = layers.keys_values_queries(c_hat, self, self.dtype)
    if self.config.normalize_keys:
      k, q, q2 = (attention.l2_normalize(t) for t in (k, q, q2))
    return StateProjections(k, v, q, q2)

  def update(self, c_BxSxD: Array, proj: StateProjections, kw_Bx2WxHxD: Array, vw_Bx2WxHxD: Array,
             key_mask_Bx1x2W: Array, taken: list | None = None) -> Array:
    """One block's state update; returns the new float32 state. taken: a list that gets each gate's mean
    openness (the diagnostics)."""
    scale_self, scale_cross = self._scales()
    a_ss = attention.attend(proj.queries, proj.keys, proj.values, scale_H=scale_self)
    a_se = attention.attend(proj.cross_queries, kw_Bx2WxHxD, vw_Bx2WxHxD, scale_H=scale_cross,
                            mask_BxQxK=key_mask_Bx1x2W)
    h_Bx2xSxHxD = jnp.stack([a_ss, a_se], axis=1)
    c = c_BxSxD.astype(jnp.float32)
    wiring, dtype = self.config.wiring, self.dtype
    if wiring == 'single':
      hidden = jax.nn.relu(layers.project(h_Bx2xSxHxD, self.ffn_in, 'bnshk,nhkf->bsf', dtype))
      z = jnp.tanh(layers.project(hidden, self.ffn_out, 'bsf,fd->bsd', dtype).astype(jnp.float32))
      return self.gate(c, z, hidden, taken)
    h_flat = h_Bx2xSxHxD.transpose(0, 2, 1, 3, 4).reshape(c.shape[0], c.shape[1], -1)
    z = layers.project(h_Bx2xSxHxD, self.out, 'bnshk,nhkd->bsd', dtype)
    u = self.gate(c, z, h_flat, taken)
    if wiring == 'skip':
      return u
    hidden = jax.nn.relu(layers.project(self.ffn_norm(u, dtype), self.ffn_in, 'bsd,df->bsf', dtype))
    z2 = layers.project(hidden, self.ffn_out, 'bsf,fd->bsd', dtype)
    return self.gate2(u, z2, hidden, taken)
