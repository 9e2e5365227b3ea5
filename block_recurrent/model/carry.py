"""Every state type that crosses a call boundary, each declaring LOGICAL_AXES (sharding.carry_axes reads
them: one tuple of logical axis names per field, one name per array dimension; a tuple-of-arrays field
names the axes of each element).

  Carry        LanguageModel.init_carry / __call__: per layer the Transformer-XL key/value cache of the last
               block seen (keys, values [B, W, H, D]), whether each row's cache belongs to the current
               document (cache_valid [B]), and per recurrent layer the state vectors (states [B, S, d],
               float32). It is an explicit argument and return value, never module state.
  DecodeState  model/decode.py (init, from_carry, step): the token-by-token form of Carry; keys/values in
               2W slots [B, 2W, H, D], valid [B, 2W], position [B], states [B, S, d] and their projected
               state_keys/state_values [B, S, H, D].
  LayerStates  GatedLanguageModel.init_carry / __call__: a container of one state per layer, each declaring
               its own axes:
    ReLiTState   model/linear_recurrent.ReLiT: C [B, H, Dh, F], s [B, H, F] (float32).
    AReLiTState  model/linear_recurrent.AReLiT: K [B, H, r, F], V [B, H, r, Dh], s [B, H, F], tau [B].
    CacheState   model/gtrxl.GTrXLAttention: keys, values [B, M, H, Dh], valid [B, M].
  ModelCarry   what a model's __call__ takes and returns: Carry or LayerStates (TrainState.carry).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Carry(NamedTuple):
  keys: tuple[Array, ...]  # per layer [B, W, H, D], compute dtype (already L2-normalised if enabled)
  values: tuple[Array, ...]  # per layer [B, W, H, D]
  cache_valid: Array  # bool [B]: may the first block of the next segment look at `keys`/`values`?
  states: tuple[Array, ...]  # per recurrent layer [B, S, d], float32

  LOGICAL_AXES = {'keys': ('batch', 'length', 'heads', 'kv'), 'values': ('batch', 'length', 'heads', 'kv'),
                  'cache_valid': ('batch',), 'states': ('batch', 'states', 'embed')}

  @property
  def batch_size(self) -> int:
    return self.cache_valid.shape[0]


class DecodeState(NamedTuple):
  keys: tuple[Array, ...]  # per layer [B, 2W, H, D]: previous block ++ current partial block
  values: tuple[Array, ...]
  valid: Array  # bool [B, 2W]: slots that hold tokens the next token may see
  position: Array  # int32 [B]: tokens of the current document consumed so far
  states: tuple[Array, ...]  # per recurrent layer [B, S, d], float32, as at the start of the block
  state_keys: tuple[Array, ...]  # per recurrent layer [B, S, H, D]: what tokens of this block read
  state_values: tuple[Array, ...]

  LOGICAL_AXES = {'keys': ('batch', 'length', 'heads', 'kv'), 'values': ('batch', 'length', 'heads', 'kv'),
                  'valid': ('batch', 'length'), 'position': ('batch',), 'states': ('batch', 'states', 'embed'),
                  'state_keys': ('batch', 'states', 'heads', 'kv'),
                  'state_values': ('batch', 'states', 'heads', 'kv')}

  @property
  def batch_size(self) -> int:
    return self.position.shape[0]


class ReLiTState(NamedTuple):
  C: Array  # [B, H, Dh, F] float32
  s: Array  # [B, H, F] float32

  LOGICAL_AXES = {'C': ('batch', 'heads', 'kv', None), 's': ('batch', 'heads', None)}


class AReLiTState(NamedTuple):
  K: Array  # [B, H, r, F] float32
  V: Array  # [B, H, r, Dh] float32
  s: Array  # [B, H, F] float32
  tau: Array  # [B]: int32 modulo the period ('fixed') or float32 ('faithful')

  LOGICAL_AXES = {'K': ('batch', 'heads', None, None), 'V': ('batch', 'heads', None, 'kv'),
                  's': ('batch', 'heads', None), 'tau': ('batch',)}


class CacheState(NamedTuple):
  keys: Array  # [B, M, H, Dh]: the last M tokens (oldest first)
  values: Array
  valid: Array  # bool [B, M]: slots holding tokens of the current episode

  LOGICAL_AXES = {'keys': ('batch', 'length', 'heads', 'kv'), 'values': ('batch', 'length', 'heads', 'kv'),
                  'valid': ('batch', 'length')}


class LayerStates(NamedTuple):
  states: tuple[Any, ...]  # per layer: ReLiTState, AReLiTState or CacheState (float32)

  LOGICAL_AXES = {}  # a container: each layer's state declares its own axes

  @property
  def batch_size(self) -> int:
    return jax.tree.leaves(self.states)[0].shape[0]


ModelCarry = Carry | LayerStates  # what a model's __call__ takes and returns


def zeros_cache(num_layers: int, batch: int, window: int, heads: int, head_dim: int, dtype):
  shape = (batch, window, heads, head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
  return zeros, zeros


def with_initial_states(carry: Carry, initial_states: tuple[Array, ...]) -> Carry:
  """carry with every row's recurrent states set to the learned initial ones (the state ablations)."""
  return carry._replace(states=tuple(jnp.broadcast_to(init_SxD, s.shape).astype(s.dtype)
                                     for init_SxD, s in zip(initial_states, carry.states)))


def reset_where(carry: Carry, start_B: Array, initial_states: tuple[Array, ...], *, clear_all: bool,
                keep_cache: bool, zero_keys_at_start: bool = False) -> Carry:
  """Rows flagged start_of_sequence forget the previous document: the state becomes the learned initial
  state and the cache is zeroed and marked invalid (masked out, not merely zeroed), or, with
  zero_keys_at_start (the reference code's behaviour), zeroed and left visible."""
  reset = jnp.ones_like(start_B) if clear_all else start_B
  states = tuple(jnp.where(reset[:, None, None], init_SxD[None].astype(jnp.float32), s)
                 for s, init_SxD in zip(carry.states, initial_states))
  keep = carry.cache_valid & ~start_B
  if not keep_cache:
    keep = jnp.zeros_like(keep)
  zero = lambda x: jnp.where(keep[:, None, None, None], x, jnp.zeros_like(x))
  valid = keep | start_B if zero_keys_at_start else keep
  return Carry(keys=tuple(map(zero, carry.keys)), values=tuple(map(zero, carry.values)),
               cache_valid=valid, states=states)
