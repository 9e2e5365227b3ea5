"""The one place that splits a segment into blocks and runs them in order, carrying the state.

`run_blocks(step, carry, x_BxNx..., window)` calls `step(carry, x_block, block_index) -> (carry, y_block)`
once per block of W tokens (the whole stack, block by block); `scan(step, carry, xs_T)` does the same over
inputs already arranged by block (a recurrent layer's state update in the segment form). Both run with
`jax.lax.scan` (the default; one compiled body) or with a Python loop (`unroll=True`, the reference the
scan is tested against). `remat` wraps the step in
`jax.checkpoint` with a named policy so that a long segment's activations need not all be stored.
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


def split_blocks(x_BxN: Array, window: int) -> Array:
  """[B, N, ...] -> [N/W, B, W, ...], blocks leading so that they can be scanned over."""
  b, n = x_BxN.shape[:2]
  x = x_BxN.reshape((b, n // window, window) + x_BxN.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def merge_blocks(x_TxBxW: Array) -> Array:
  """[N/W, B, W, ...] -> [B, N, ...]."""
  x = jnp.moveaxis(x_TxBxW, 0, 1)
  return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def scan(step: Callable, carry, xs_T, *, unroll: bool = False, scan_unroll: int = 1, remat: str = 'none'):
  """Runs `step(carry, x_t, t) -> (carry, y_t)` over the leading (block) axis of the pytree xs_T."""
  num = jax.tree.leaves(xs_T)[0].shape[0]
  indices = jnp.arange(num, dtype=jnp.int32)
  body = lambda c, xs: step(c, xs[0], xs[1])
  if remat != 'none':
    body = jax.checkpoint(body, policy=REMAT_POLICIES[remat], prevent_cse=unroll)
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
