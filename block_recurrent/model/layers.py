"""Small building blocks shared by every layer: parameter initialisers, RMSNorm, projections, dropout."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def variance_scaling(rngs: nnx.Rngs, shape, in_axis, scale: float = 1.0) -> nnx.Param:
  """Truncated-normal fan-in variance scaling, the initialiser of every projection in the paper."""
  out_axis = tuple(i for i in range(len(shape)) if i not in (in_axis if isinstance(in_axis, tuple)
                                                              else (in_axis,)))
  init = jax.nn.initializers.variance_scaling(scale, 'fan_in', 'truncated_normal', in_axis=in_axis,
                                               out_axis=out_axis)
  return nnx.Param(init(rngs.params(), shape, jnp.float32))


def logit_divisor(config) -> float:
  """What the tied output embedding's logits are divided by (ModelConfig.logit_scale)."""
  return math.sqrt(config.vocab_size if config.logit_scale == 'sqrt_vocab' else config.d_model)


def normal(rngs: nnx.Rngs, shape, stddev: float) -> nnx.Param:
  return nnx.Param(stddev * jax.random.normal(rngs.params(), shape, jnp.float32))


def project(x: Array, kernel: nnx.Param | Array, spec: str, dtype) -> Array:
  """einsum of an activation with a float32 kernel in the compute dtype (see product), cast to it."""
  return product(spec, x, kernel[...], dtype).astype(dtype)


def product(spec: str, a: Array, b: Array, dtype) -> Array:
  """einsum(spec, a, b) on operands cast to the compute dtype, accumulated and returned in float32.

  In float32 this is the plain einsum. Below it (bfloat16), mixed_einsum keeps the backward matmuls in
  the compute dtype too, and each gradient comes back in its operand's dtype (a float32 kernel's in
  float32)."""
  if jnp.dtype(dtype) == jnp.float32:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
  return mixed_einsum(spec, jnp.dtype(dtype), a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def mixed_einsum(spec: str, dtype, x: Array, w: Array) -> Array:
  """einsum(spec, x, w) on operands cast to `dtype` (below float32), accumulated and returned in float32.

  Left to autodiff, the backward matmuls of a low-precision einsum get one float32 operand (the
  cotangent) and run in float32; XLA:CPU also upcasts any bfloat16 dot whose result is bfloat16. Both
  halve the speed on CPUs with native bfloat16 dot products (AVX512-BF16: ~400 against ~200 GFLOP/s
  seen on a 2-core EPYC). Here the cotangent is cast to `dtype` too, each gradient matmul accumulates
  in float32, and each gradient is returned in its operand's dtype (the float32 kernel's in float32)."""
  return jnp.einsum(spec, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_fwd(spec, dtype, x, w):
  xc, wc = x.astype(dtype), w.astype(dtype)
  out = jnp.einsum(spec, xc, wc, preferred_element_type=jnp.float32)
  return out, (xc, wc, jnp.zeros((0,), x.dtype), jnp.zeros((0,), w.dtype))


def _mixed_bwd(spec, dtype, res, g):
  xc, wc, x_like, w_like = res
  inputs, out = spec.split('->')
  x_spec, w_spec = inputs.split(',')
  gc = g.astype(dtype)
  dx = jnp.einsum(f'{out},{w_spec}->{x_spec}', gc, wc, preferred_element_type=jnp.float32)
  dw = jnp.einsum(f'{x_spec},{out}->{w_spec}', xc, gc, preferred_element_type=jnp.float32)
  return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


mixed_einsum.defvjp(_mixed_fwd, _mixed_bwd)


def attention_kernels(rngs: nnx.Rngs, d: int, queries: int, heads: int, key_heads: int, head_dim: int) -> dict:
  """The projection parameters of an attention input: keys, values and `queries` query projections.

  With a key/value head per query head: one stacked kernel {'qkv': [d, 2 + queries, H, D]} (K, V, Q...).
  With fewer key/value heads G: {'kv': [d, 2, G, D], 'q': [d, queries, H, D]}, applied as one matmul.
  """
  if key_heads == heads:
    return {'qkv': variance_scaling(rngs, (d, 2 + queries, heads, head_dim), in_axis=0)}
  return {'kv': variance_scaling(rngs, (d, 2, key_heads, head_dim), in_axis=0),
          'q': variance_scaling(rngs, (d, queries, heads, head_dim), in_axis=0)}


def keys_values_queries(x: Array, module, dtype) -> tuple[Array, Array, list[Array]]:
  """(keys [..., G, D], values [..., G, D], [queries [..., H, D]]) of x [..., d] from a module holding
  the parameters of attention_kernels() as attributes."""
  if hasattr(module, 'qkv'):
    k, v, *queries = jnp.unstack(project(x, module.qkv, '...d,dnhk->n...hk', dtype))
    return k, v, queries
  kv, q = module.kv[...], module.q[...]
  d = kv.shape[0]
  kernel = jnp.concatenate([kv.reshape(d, -1), q.reshape(d, -1)], axis=1)
  y = project(x, kernel, '...d,de->...e', dtype)  # one matmul for keys, values and queries
  kvs = y[..., :kv.size // d].reshape(y.shape[:-1] + kv.shape[1:])
  qs = y[..., kv.size // d:].reshape(y.shape[:-1] + q.shape[1:])
  return kvs[..., 0, :, :], kvs[..., 1, :, :], [qs[..., i, :, :] for i in range(q.shape[1])]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def broadcast_param(p: Array, leading: tuple[int, ...]) -> Array:
  """p broadcast to leading + p.shape, whose gradient sums the leading axes with a matmul.

  XLA's CPU backend reduces leading axes of a large tensor ~50x slower than a ones-vector matmul does
  (seen on jax 0.10: 133 ms against 3 ms for [4, 8, 512, 1024]); every parameter shared across batch
  rows and positions goes through here so that its gradient is cheap.
  """
  return jnp.broadcast_to(p, leading + p.shape)


def _broadcast_fwd(p, leading):
  return broadcast_param(p, leading), None


def _broadcast_bwd(leading, _, g):
  flat = g.reshape(math.prod(leading), -1)
  total = jnp.einsum('m,mk->k', jnp.ones(flat.shape[0], flat.dtype), flat,
                     preferred_element_type=jnp.float32)
  return (total.reshape(g.shape[len(leading):]).astype(g.dtype),)


broadcast_param.defvjp(_broadcast_fwd, _broadcast_bwd)


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learned scale only (no mean, no bias), computed in float32."""

  def __init__(self, dim: int, eps: float = 1e-6):
    self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.eps = eps

  def __call__(self, x: Array, dtype=jnp.float32) -> Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * broadcast_param(self.scale[...], x.shape[:-1])).astype(dtype)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
  """Inverted dropout; `key=None` means deterministic (the default everywhere)."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_key(key: Array | None, num: int) -> list[Array | None]:
  return [None] * num if key is None else list(jax.random.split(key, num))
