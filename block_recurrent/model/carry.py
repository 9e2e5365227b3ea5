"""The typed carry that crosses block and segment boundaries.

It holds, per layer, the keys/values of the last block seen (the Transformer-XL cache), whether each
row's cache belongs to the current document, and, per recurrent layer, the state vectors (always float32).
It is an explicit argument and return value, never module state.
"""

from __future__ import annotations

from typing import NamedTuple

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


def zeros_cache(num_layers: int, batch: int, window: int, heads: int, head_dim: int, dtype):
  shape = (batch, window, heads, head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
  return zeros, zeros


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
