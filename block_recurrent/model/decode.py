"""The token-by-token form of every model variant, with the recurrent state live during generation.

A DecodeState holds, per layer, the keys/values of (previous block ++ current partial block) in 2W slots,
which slots hold tokens of the current document, each row's position in its document, and per
recurrent layer the state and its keys/values (projected once per block). A token at offset t of its
block occupies slot W+t and reads slots t .. W+t-1 with the block form's mask row and T5 bias row, and
the state's keys/values from the start of its block, so its logits are the block form's. When a row's
block completes, every recurrent state is updated from the 2W slots exactly as the block form does,
re-projected, and the slots shift by W. The cost per token is O(W + S), whatever the position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from block_recurrent.configs import ConfigError
from block_recurrent.model import attention, blocks, carry as carry_lib, recurrent
from block_recurrent.model.carry import DecodeState

Array = jax.Array


def _state_kv(model, states):
  projections = [layer.state.project(s) for layer, s in zip(model.recurrent_layers, states)]
  return tuple(p.keys for p in projections), tuple(p.values for p in projections)


def from_carry(model, carry: carry_lib.Carry, position_B: Array) -> DecodeState:
  """The decode state after a whole number of blocks run by the block or segment form."""
  window = model.config.window
  empty = lambda k: jnp.concatenate([k, jnp.zeros_like(k)], axis=1)
  batch = carry.batch_size
  valid = jnp.concatenate([jnp.broadcast_to(carry.cache_valid[:, None], (batch, window)),
                           jnp.zeros((batch, window), bool)], axis=1)
  state_keys, state_values = _state_kv(model, carry.states)
  return DecodeState(tuple(map(empty, carry.keys)), tuple(map(empty, carry.values)), valid,
                     jnp.asarray(position_B, jnp.int32), tuple(carry.states), state_keys, state_values)


def init(model, batch_size: int) -> DecodeState:
  """A decode state at the beginning of a document (the learned initial states, nothing to look back at)."""
  return from_carry(model, model.init_carry(batch_size), jnp.zeros((batch_size,), jnp.int32))


def _where_rows(rows_B: Array, new, old):
  def pick(a, b):
    return jnp.where(rows_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
  return jax.tree.map(pick, new, old)


def _begin(model, ds: DecodeState, start_B: Array) -> DecodeState:
  """Rows starting a document forget everything; segment starts apply use_xl_cache/always_clear_state
  exactly as the block form does at each segment boundary."""
  cfg = model.config
  position = jnp.where(start_B, 0, ds.position)
  segment_start = position % cfg.segment_length == 0
  clear_slots = start_B | (segment_start & (not cfg.use_xl_cache))
  valid = ds.valid & ~clear_slots[:, None]
  if cfg.document_start_keys == 'zeros':  # the reference: a zeroed previous block that is attended to
    previous = jnp.arange(2 * cfg.window) < cfg.window
    valid = valid | (start_B[:, None] & previous[None])
    zero = lambda t: jnp.where(start_B[:, None, None, None], jnp.zeros_like(t), t)
    ds = ds._replace(keys=tuple(map(zero, ds.keys)), values=tuple(map(zero, ds.values)))
  reset = start_B | (segment_start & cfg.always_clear_state)
  ds = ds._replace(position=position, valid=valid)
  if not model.recurrent_layers:
    return ds

  def reset_states(ds):
    initial = tuple(jnp.broadcast_to(layer.state.initial[...], s.shape).astype(jnp.float32)
                    for layer, s in zip(model.recurrent_layers, ds.states))
    states = _where_rows(reset, initial, ds.states)
    state_keys, state_values = _state_kv(model, states)
    return ds._replace(states=states, state_keys=_where_rows(reset, state_keys, ds.state_keys),
                       state_values=_where_rows(reset, state_values, ds.state_values))

  return jax.lax.cond(jnp.any(reset), reset_states, lambda ds: ds, ds)


def _end_block(model, ds: DecodeState, complete_B: Array) -> DecodeState:
  """Rows whose block just completed: update each recurrent state from the 2W slots, shift the slots."""
  cfg = model.config
  window = cfg.window
  states = list(ds.states)
  for r, i in enumerate(cfg.recurrent_indices):
    layer = model.layers[i]
    proj = layer.state.project(ds.states[r])
    new = layer.state.update(ds.states[r], proj, ds.keys[i], ds.values[i], ds.valid[:, None, :])
    states[r] = _where_rows(complete_B, new, ds.states[r])
  state_keys, state_values = _state_kv(model, states)
  shift = lambda t: jnp.concatenate([t[:, window:], jnp.zeros_like(t[:, window:])], axis=1)
  return DecodeState(keys=_where_rows(complete_B, tuple(map(shift, ds.keys)), ds.keys),
                     values=_where_rows(complete_B, tuple(map(shift, ds.values)), ds.values),
                     valid=_where_rows(complete_B, shift(ds.valid), ds.valid), position=ds.position,
                     states=tuple(states), state_keys=_where_rows(complete_B, state_keys, ds.state_keys),
                     state_values=_where_rows(complete_B, state_values, ds.state_values))


def step(model, ds: DecodeState, token_B: Array, start_B: Array | None = None):
  """One token per row: (logits [B, V] float32 for the next token, the new decode state).

  start_B marks rows whose token is the first input of a new document (the learned initial state,
  nothing before it visible), as start_of_sequence does for a segment.
  """
  batch = ds.batch_size
  if jnp.shape(token_B) != (batch,):
    raise ConfigError(f'decode step takes one token per row: int32 [{batch}], got shape {jnp.shape(token_B)}')
  x = model.embed[...].astype(jnp.dtype(model.config.dtype))[token_B][:, None, :]  # [B, 1, d]
  y, ds = step_embedded(model, ds, x, start_B)
  return model.logits(y)[:, 0], ds


def step_embedded(model, ds: DecodeState, x_Bx1xD: Array, start_B: Array | None = None):
  """step() from an embedded input on: (the last layer's output [B, 1, d] before the final norm, the new
  decode state). What a policy core over observations uses (rl/a2c.py)."""
  cfg = model.config
  window, dtype = cfg.window, jnp.dtype(cfg.dtype)
  batch = ds.batch_size
  start_B = jnp.zeros((batch,), bool) if start_B is None else jnp.asarray(start_B, bool)
  ds = _begin(model, ds, start_B)
  offset = ds.position % window  # [B]
  slot = window + offset
  j = jnp.arange(2 * window)
  here = j[None, :] == slot[:, None]  # [B, 2W]: this token's slot
  mask = ((j[None, :] >= offset[:, None]) & (j[None, :] < slot[:, None]) & ds.valid)[:, None, :]
  table = jnp.asarray(attention.distance_buckets(2 * window, cfg.relative_buckets, cfg.relative_max_distance))
  buckets = table[jnp.maximum(slot[:, None] - j[None, :], 0)]  # [B, 2W]: the block form's q - k buckets

  x = x_Bx1xD.astype(dtype)
  keys, values = list(ds.keys), list(ds.values)
  for i, layer in enumerate(model.layers):
    bias = jnp.transpose(layer.relative_bias[...][:, buckets], (1, 0, 2))[:, :, None, :]  # [B, H, 1, 2W]
    source = cfg.recurrent_indices.index(i) if layer.kind == 'recurrent' else 0  # feedback reads layer 0's
    state_proj = (recurrent.StateProjections(ds.state_keys[source], ds.state_values[source], None, None)
                  if layer.cross else None)
    x, keys[i], values[i] = layer.token(x, keys[i], values[i], here, bias, mask, state_proj)
  ds = ds._replace(keys=tuple(keys), values=tuple(values), valid=ds.valid | here, position=ds.position + 1)
  complete = offset == window - 1
  ds = jax.lax.cond(jnp.any(complete), lambda d: _end_block(model, d, complete), lambda d: d, ds)
  return x, ds


def run(model, ds: DecodeState, tokens_BxT: Array, start_BxT: Array | None = None):
  """step() over T tokens in a scan (model/blocks.py): (logits [B, T, V], final decode state); teacher forcing."""
  if start_BxT is None:
    start_BxT = jnp.zeros(jnp.shape(tokens_BxT), bool)

  def body(d, xs):
    logits, d = step(model, d, xs[0], xs[1])
    return d, logits

  ds, logits = blocks.scan_along(body, ds, (jnp.asarray(tokens_BxT), jnp.asarray(start_BxT, bool)), axis=1)
  return logits, ds

