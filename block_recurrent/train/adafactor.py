"""Adafactor as the paper's code ran it (flax.optim.Adafactor: factored second moments, decay 0.8, momentum
0.9, parameter-scale updates, update clipping at RMS 1.0), on our stacked parameters.

Adafactor is not elementwise: its factoring (which two dimensions, and whether at all), its parameter
scale and its update clipping each look at a whole tensor. The reference keeps apart what we stack for
speed (q/k/v/q2 kernels in one `qkv`, the temperatures of two attentions in one array, an LSTM gate's two
kernels) and shapes its kernels [d, H*D] where ours are [d, n, H, D]. Run on our arrays, optax's
Adafactor would factor other dimensions (at head size 32 not at all) and scale and clip whole stacks.

So every parameter declares how it splits into the reference's tensors (`View`, by parameter name and rank
as sharding.PARAM_AXES): `pieces` axes index separate tensors, `rows` and `cols` form each tensor's two
dimensions. The statistics are computed per piece over those axes, on the parameter's own layout:
nothing is copied or reshaped, the momentum (and any unfactored second moment) has the parameter's shape
and is sharded like it, and the factored statistics keep their reduced axes as size 1. Each reference
tensor is updated exactly as optax.adafactor updates it alone (tests/train/test_adafactor.py).
Cost against optax's on the stacked arrays: the same arithmetic and state size, a few more reductions.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from block_recurrent import sharding
from block_recurrent.configs import ConfigError


class View(NamedTuple):
  """How a stored parameter splits into the reference's tensors (axes of the stored array)."""
  pieces: tuple[int, ...]  # each index along these axes is a tensor of its own
  rows: tuple[int, ...]  # flattened: the tensor's first dimension
  cols: tuple[int, ...] = ()  # flattened: its second dimension (empty for a vector)


# (parameter name, rank) -> View, where it is not the parameter itself (rank 1 or 2: see view()).
REFERENCE_TENSORS: dict[tuple[str, int], View] = {
    ('qkv', 4): View((1,), (0,), (2, 3)),  # [d, n, H, D]: n kernels [d, H*D] (K, V, Q, Q2)
    ('kv', 4): View((1,), (0,), (2, 3)),  # fewer key/value heads: K and V kernels [d, G*D]
    ('q', 4): View((1,), (0,), (2, 3)),
    ('out', 4): View((), (0, 1, 2), (3,)),  # [n, H, D, d]: one [n*H*D, d] projection of the concatenated heads
    ('ffn_in', 4): View((), (0, 1, 2), (3,)),  # 'single' wiring: [2HD, F]
    ('temperature', 2): View((0,), (1,)),  # [n, H]: a temperature vector per attention
    ('kernel', 3): View((1,), (0,), (2,)),  # LSTM gate [y, 2, d]: forget and input kernels [y, d]
    ('bias', 2): View((0,), (1,)),  # LSTM gate [2, d]: their biases
    # gated_lm.py (ReLiT / AReLiT features, GRU gates, GTrXL attention), in the same spirit
    ('kqv', 4): View((1,), (0,), (2, 3)),
    ('p', 4): View((1,), (0,), (2, 3)),
    ('out', 3): View((), (0, 1), (2,)),
    ('w', 3): View((1,), (0,), (2,)),
    ('u', 3): View((1,), (0,), (2,)),
    ('rel', 3): View((), (0,), (1, 2)),
    ('gate_bias', 3): View((0,), (1, 2)),
}


def view(path, shape) -> View:
  rank = len(shape)
  found = REFERENCE_TENSORS.get((sharding.param_name(path), rank))
  if found is not None:
    return found
  if rank in (1, 2):
    return View((), (0,), tuple(range(1, rank)))
  raise ConfigError(f'parameter {jax.tree_util.keystr(path)} (rank {rank}) has no Adafactor view: add how it '
                    'splits into tensors to adafactor.REFERENCE_TENSORS')


def _size(shape, axes) -> int:
  return math.prod(shape[a] for a in axes)


def _factored(shape, v: View, min_dim_size_to_factor: int) -> bool:
  """optax's rule on the reference tensor: factor when it is a matrix whose smaller side is >= the minimum."""
  return bool(v.cols) and min(_size(shape, v.rows), _size(shape, v.cols)) >= min_dim_size_to_factor


def _sides(shape, v: View) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(smaller, larger) side of the matrix; optax normalises the statistic indexed by the smaller one
  (the second largest dimension; rows on a tie)."""
  return (v.rows, v.cols) if _size(shape, v.rows) <= _size(shape, v.cols) else (v.cols, v.rows)


class _PerParam:
  """What one parameter's update returns; not a pytree, so a tree of these has them as leaves."""

  def __init__(self, *values):
    self.values = values


def _field(tree, i: int):
  return jax.tree.map(lambda r: r.values[i], tree, is_leaf=lambda x: isinstance(x, _PerParam))


class AdafactorState(NamedTuple):
  count: jax.Array  # int32: updates so far
  v_small: Any  # per parameter: factored mean of g^2 over the larger side (kept as size-1 axes), else [1...]
  v_large: Any  # over the smaller side
  v: Any  # the full second moment where a tensor is not factored, else [1...]
  momentum: Any  # the parameter's shape (zeros, unused, with momentum=0)


def adafactor(learning_rate: optax.ScalarOrSchedule, *, decay_rate: float = 0.8, momentum: float = 0.9,
              clipping_threshold: float | None = 1.0, min_dim_size_to_factor: int = 128,
              epsilon: float = 1e-30, min_scale: float = 1e-3) -> optax.GradientTransformation:
  """optax.adafactor(learning_rate, decay_rate, clipping_threshold, momentum, multiply_by_parameter_scale=True)
  applied to each reference tensor on its own (module docstring)."""
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def init(params):
    def one(path, p):
      v = view(path, p.shape)
      ones = jnp.zeros((1,) * p.ndim, p.dtype)
      if _factored(p.shape, v, min_dim_size_to_factor):
        small, large = _sides(p.shape, v)
        keep = lambda axes: jnp.zeros(tuple(1 if a in axes else n for a, n in enumerate(p.shape)), p.dtype)
        return _PerParam(keep(large), keep(small), ones)
      return _PerParam(ones, ones, jnp.zeros_like(p))

    stats = jax.tree_util.tree_map_with_path(one, params)
    return AdafactorState(jnp.zeros([], jnp.int32), _field(stats, 0), _field(stats, 1), _field(stats, 2),
                          jax.tree.map(jnp.zeros_like, params))

  def update(grads, state: AdafactorState, params=None):
    if params is None:
      raise ValueError('adafactor needs the parameters (parameter-scale updates)')
    count = state.count
    decay = 1.0 - (count.astype(jnp.float32) + 1.0) ** (-decay_rate)
    lr = schedule(count)

    def one(path, g, v_small, v_large, v_full, m, p):
      view_ = view(path, p.shape)
      tensor = view_.rows + view_.cols  # reduced per piece
      g = g.astype(jnp.float32)
      g2 = g * g + epsilon
      if _factored(p.shape, view_, min_dim_size_to_factor):
        small, large = _sides(p.shape, view_)
        v_small = decay * v_small + (1.0 - decay) * jnp.mean(g2, axis=large, keepdims=True)
        v_large = decay * v_large + (1.0 - decay) * jnp.mean(g2, axis=small, keepdims=True)
        mean = jnp.mean(v_small, axis=small, keepdims=True)
        u = g * (v_small / mean) ** -0.5 * v_large ** -0.5
      else:
        v_full = decay * v_full + (1.0 - decay) * g2
        u = g * v_full ** -0.5
      if clipping_threshold is not None:
        rms = jnp.sqrt(jnp.mean(u * u, axis=tensor, keepdims=True))
        u = u / jnp.maximum(1.0, rms / clipping_threshold)
      u = u * lr
      p32 = p.astype(jnp.float32)
      u = u * jnp.maximum(jnp.sqrt(jnp.mean(p32 * p32, axis=tensor, keepdims=True)), min_scale)
      if momentum:
        u = m = momentum * m + (1.0 - momentum) * u
      return _PerParam(-u.astype(p.dtype), v_small, v_large, v_full, m)

    out = jax.tree_util.tree_map_with_path(one, grads, state.v_small, state.v_large, state.v, state.momentum,
                                           params)
    return _field(out, 0), AdafactorState(optax.safe_increment(count), *(_field(out, i) for i in range(1, 5)))

  return optax.GradientTransformation(init, update)
