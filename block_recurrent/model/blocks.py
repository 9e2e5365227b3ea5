"""The one module that owns how a sequence is cut up and run in order, for every layer kind: block
splitting and the (previous block ++ this block) attention windows, scans with a carried state, linear
recurrences, chunking, and remat. The models say what one step computes; this module says how the steps
are arranged.

  split_blocks / merge_blocks   [B, N, ...] <-> [N/W, B, W, ...]: blocks leading, to be scanned over
  by_block                      [B, N, ...] -> [B, N/W, W, ...]: blocks side by side, to be batched over
  windows                       each block's keys/values with the previous block's in front, [B, T, 2W, ...]
  scan / run_blocks             step(carry, x_t, t) over a leading axis / over the blocks of a segment
  scan_along                    step(carry, x_t) over any one axis of the inputs (a time axis)
  chunks / unchunk              a time axis cut into chunks of c positions (leading), and back
  linear_recurrence             h_t = decay_t * h_{t-1} + update_t at once (an associative scan)
  checkpointed                  remat: jax.checkpoint with a named policy (REMAT_POLICIES)

Every scan runs with `jax.lax.scan` (one compiled body) or, with `unroll=True`, a Python loop: the
reference the scan is tested against.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

REMAT_POLICIES = {
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def checkpointed(fn: Callable, policy: str, *, prevent_cse: bool = True) -> Callable:
  """fn recomputed in the backward pass under a REMAT_POLICIES policy; fn itself for 'none'."""
  if policy == 'none':
    return fn
  return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse)


def split_blocks(x_BxN: Array, window: int) -> Array:
  """[B, N, ...] -> [N/W, B, W, ...], blocks leading so that they can be scanned over."""
  return jnp.moveaxis(by_block(x_BxN, window), 1, 0)


def merge_blocks(x_TxBxW: Array) -> Array:
  """[N/W, B, W, ...] -> [B, N, ...]."""
  x = jnp.moveaxis(x_TxBxW, 0, 1)
  return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def by_block(x_BxN: Array, window: int) -> Array:
  """[B, N, ...] -> [B, N/W, W, ...]."""
  b, n = x_BxN.shape[:2]
  return x_BxN.reshape((b, n // window, window) + x_BxN.shape[2:])


def windows(k_BxTxW: Array, v_BxTxW: Array, k_prev_BxW: Array, v_prev_BxW: Array, prev_valid_B: Array):
  """Each block's attention window, the previous block ++ the block itself: (keys, values [B, T, 2W, ...],
  key_valid [B, T, 2W]). Block 0's previous block is the carried one (valid where prev_valid_B holds)."""
  batch, blocks, window = k_BxTxW.shape[:3]
  k_before = jnp.concatenate([k_prev_BxW.astype(k_BxTxW.dtype)[:, None], k_BxTxW[:, :-1]], axis=1)
  v_before = jnp.concatenate([v_prev_BxW.astype(v_BxTxW.dtype)[:, None], v_BxTxW[:, :-1]], axis=1)
  prev_valid = jnp.concatenate([prev_valid_B[:, None], jnp.ones((batch, blocks - 1), bool)], axis=1)
  key_valid = jnp.concatenate([jnp.broadcast_to(prev_valid[..., None], (batch, blocks, window)),
                               jnp.ones((batch, blocks, window), bool)], axis=2)
  return (jnp.concatenate([k_before, k_BxTxW], axis=2), jnp.concatenate([v_before, v_BxTxW], axis=2),
          key_valid)


def scan(step: Callable, carry, xs_T, *, unroll: bool = False, scan_unroll: int = 1, remat: str = 'none'):
  """Runs `step(carry, x_t, t) -> (carry, y_t)` over the leading (block) axis of the pytree xs_T."""
  num = jax.tree.leaves(xs_T)[0].shape[0]
  indices = jnp.arange(num, dtype=jnp.int32)
  body = checkpointed(lambda c, xs: step(c, xs[0], xs[1]), remat, prevent_cse=unroll)
  if unroll:
    outputs = []
    for t in range(num):
      carry, y = body(carry, (jax.tree.map(lambda a: a[t], xs_T), indices[t]))
      outputs.append(y)
    return carry, jax.tree.map(lambda *a: jnp.stack(a), *outputs)
  return jax.lax.scan(body, carry, (xs_T, indices), unroll=scan_unroll)


def run_blocks(step: Callable, carry, x_BxN: Array, window: int, *, unroll: bool = False,
               scan_unroll: int = 1, remat: str = 'none'):
  """Runs `step` over the blocks of x in order; returns (final carry, outputs merged back to [B, N, ...])."""
  carry, ys = scan(step, carry, split_blocks(x_BxN, window), unroll=unroll, scan_unroll=scan_unroll,
                   remat=remat)
  return carry, jax.tree.map(merge_blocks, ys)


def scan_along(step: Callable, carry, xs, axis: int, **how):
  """Runs `step(carry, x_t) -> (carry, y_t)` over axis `axis` of every array of the pytree xs; the
  outputs have their time axis at `axis` again. `how`: scan's unroll, scan_unroll and remat."""
  carry, ys = scan(lambda c, x, _: step(c, x), carry, jax.tree.map(lambda t: jnp.moveaxis(t, axis, 0), xs),
                   **how)
  return carry, jax.tree.map(lambda t: jnp.moveaxis(t, 0, axis), ys)


def chunks(x: Array, chunk: int, axis: int) -> Array:
  """Axis `axis` (a multiple of chunk long) cut into chunks: [..., n*c, ...] -> [n, ..., c, ...]."""
  n = x.shape[axis] // chunk
  x = x.reshape(x.shape[:axis] + (n, chunk) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def unchunk(x: Array, axis: int) -> Array:
  """The inverse of chunks: [n, ..., c, ...] -> [..., n*c, ...], the chunk axis at `axis` as given to chunks."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def linear_recurrence(decay: Array, update: Array, initial: Array, axis: int) -> Array:
  """Every h_t = decay_t * h_{t-1} + update_t along `axis`, from `initial` (which has no such axis), at
  once with an associative scan: parallel in time, memory of every position's h."""
  def combine(a, b):
    return a[0] * b[0], b[0] * a[1] + b[1]
  prod, acc = jax.lax.associative_scan(combine, (decay, update), axis=axis)
  return prod * jnp.expand_dims(initial, axis) + acc
