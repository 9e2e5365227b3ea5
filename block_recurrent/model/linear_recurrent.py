"""Recurrent linear transformer layers (Pramanik et al. 2023): ReLiT and its low-rank AReLiT.

Both follow one contract with every sequence layer here: `init_state(batch)`, then
`layer(x_BxTxD, state, reset_BxT) -> (y_BxTxH*Dh, new_state)`, where T=1 is the step form and T>1 the
training form, and reset[b, t] means token t starts a new document or episode (forget all before it).

Per head, with x_t the layer input, Dh the head size and eta the feature expansion (F = eta * Dh):
    phi(k) = flatten(relu(W_p1 x) (x) relu(W_k x))     phi(q) = flatten(relu(W_p2 x) (x) relu(W_q x))
    beta = sigmoid(W_b x) [Dh]                         gamma = flatten(sigmoid(W_p3 x) (x) sigmoid(W_g x)) [F]
ReLiT keeps C [Dh, F] and s [F]:
    separable (the paper's):     C <- ((1-beta)(1-gamma)^T) * C + (beta v)(gamma phi(k))^T
    reference (the authors' code): C <- (1 - beta gamma^T) * C + (beta v)(gamma phi(k))^T
    s <- (1-gamma) * s + gamma phi(k);   o = C phi(q) / (s . phi(q) + eps)
AReLiT keeps r cosine-modulated factors K~ [r, F], V~ [r, Dh], s [F] and a time counter tau:
    K~_k <- (1-gamma) * K~_k + cos(w_k tau) gamma phi(k);   V~_k <- (1-beta) * V~_k + cos(w_k tau) beta v
    o = sum_k V~_k (K~_k . phi(q)) / (2r s . phi(q) + eps)
'faithful' AReLiT uses the reference's w = linspace(-pi, pi, r) and a float32 counter that is never reset;
'fixed' uses distinct frequencies w_k = 2 pi k / P (P = 2(r+1)) and an int32 counter kept modulo P and reset
with the episode, so it stays exact however long the run.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent.model import blocks, layers
from block_recurrent.model.carry import AReLiTState, ReLiTState

Array = jax.Array
EPS = 1e-6


class _Features(nnx.Module):
  """The projections both layers share: phi(k), phi(q), v, beta and gamma for every head."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int, eta: int, rngs: nnx.Rngs,
               gate_bias: float | None = None):
    """gate_bias: None (the paper: no biases in the gates) or the initial value of learned biases added
    before the sigmoids of beta, g and p3; a negative value starts every gate nearly shut, so the state
    keeps what it holds over long spans from the first update (our option, not the paper's)."""
    self.num_heads, self.head_dim, self.eta = num_heads, head_dim, eta
    self.kqv = layers.variance_scaling(rngs, (d_model, 5, num_heads, head_dim), in_axis=0)  # k q v beta g
    self.p = layers.variance_scaling(rngs, (d_model, 3, num_heads, eta), in_axis=0)  # p1 p2 p3
    self.out = layers.variance_scaling(rngs, (num_heads, head_dim, d_model), in_axis=(0, 1))
    self.biased = gate_bias is not None
    if self.biased:
      self.gate_bias = nnx.Param(jnp.full((2, num_heads, head_dim), gate_bias, jnp.float32))  # beta, g
      self.p3_bias = nnx.Param(jnp.full((num_heads, eta), gate_bias, jnp.float32))

  def __call__(self, x_BxTxD: Array):
    x = x_BxTxD.astype(jnp.float32)
    k, q, v, b, g = jnp.unstack(jnp.einsum('btd,dnhk->nbhtk', x, self.kqv[...]))  # [B, H, T, Dh]
    p1, p2, p3 = jnp.unstack(jnp.einsum('btd,dnhe->nbhte', x, self.p[...]))  # [B, H, T, eta]
    outer = lambda a, c: (a[..., :, None] * c[..., None, :]).reshape(a.shape[:-1] + (-1,))  # eta-major
    phi_k = outer(jax.nn.relu(p1), jax.nn.relu(k))
    phi_q = outer(jax.nn.relu(p2), jax.nn.relu(q))
    if self.biased:
      bias = self.gate_bias[...]
      b = b + bias[0][:, None, :]
      g = g + bias[1][:, None, :]
      p3 = p3 + self.p3_bias[...][:, None, :]
    gamma = outer(jax.nn.sigmoid(p3), jax.nn.sigmoid(g))
    return phi_k, phi_q, v, jax.nn.sigmoid(b), gamma

  def project_out(self, o_BxHxTxDh: Array) -> Array:
    return jnp.einsum('bhtk,hkd->btd', o_BxHxTxDh, self.out[...])


def _keep(reset_BxT: Array) -> Array:
  return (~jnp.asarray(reset_BxT, bool)).astype(jnp.float32)[:, None, :]  # [B, 1, T]


def _per_head(phi_k, phi_q, v, beta, gamma, keep) -> tuple:
  """The per-position inputs of a step loop, [B, H, T, ...] (keep broadcast over heads)."""
  keep = jnp.broadcast_to(keep, keep.shape[:1] + (phi_k.shape[1],) + keep.shape[2:])
  return phi_k, phi_q, v, beta, gamma, keep


class ReLiT(nnx.Module):

  def __init__(self, d_model: int, num_heads: int, head_dim: int, eta: int, rngs: nnx.Rngs, *,
               gating: str = 'separable', chunk: int = 16, gate_bias: float | None = None):
    if gating not in ('separable', 'reference'):
      raise ValueError(f"ReLiT gating must be 'separable' or 'reference', got {gating!r}")
    self.gating, self.chunk = gating, chunk
    self.features = _Features(d_model, num_heads, head_dim, eta, rngs, gate_bias)

  def init_state(self, batch: int) -> ReLiTState:
    f = self.features
    return ReLiTState(jnp.zeros((batch, f.num_heads, f.head_dim, f.eta * f.head_dim), jnp.float32),
                      jnp.zeros((batch, f.num_heads, f.eta * f.head_dim), jnp.float32))

  def __call__(self, x_BxTxD: Array, state: ReLiTState, reset_BxT: Array, *, form: str = 'auto'):
    """form: 'step' (a loop of single steps, the reference), 'chunked' (separable only: one state per
    chunk, never one per position), 'parallel' (an associative scan) or 'auto'."""
    phi_k, phi_q, v, beta, gamma = self.features(x_BxTxD)
    keep = _keep(reset_BxT)
    if form == 'auto':
      form = 'chunked' if self.gating == 'separable' else 'parallel'
    if form == 'step':
      o, state = _relit_steps(self.gating, phi_k, phi_q, v, beta, gamma, keep, state)
    elif form == 'chunked':
      if self.gating != 'separable':
        raise ValueError('the chunked form needs separable gating')
      o, state = _relit_chunked(phi_k, phi_q, v, beta, gamma, keep, state, self.chunk)
    elif form == 'parallel':
      o, state = _relit_parallel(self.gating, phi_k, phi_q, v, beta, gamma, keep, state)
    else:
      raise ValueError(f'unknown form {form!r}')
    return self.features.project_out(o), state


def _relit_decay(gating, beta, gamma):
  if gating == 'separable':
    return (1.0 - beta)[..., :, None] * (1.0 - gamma)[..., None, :]
  return 1.0 - beta[..., :, None] * gamma[..., None, :]


def _readout(C, s, phi_q):
  num = jnp.einsum('bhtif,bhtf->bhti', C, phi_q)
  return num / (jnp.einsum('bhtf,bhtf->bht', s, phi_q)[..., None] + EPS)


def _relit_steps(gating, phi_k, phi_q, v, beta, gamma, keep, state):
  def step(st, xs):
    pk, pq, v_t, b, g, k = xs  # [B, H, ...] at one time
    C = st.C * k[..., None, None]
    s = st.s * k[..., None]
    C = _relit_decay(gating, b, g) * C + (b * v_t)[..., :, None] * (g * pk)[..., None, :]
    s = (1.0 - g) * s + g * pk
    num = jnp.einsum('bhif,bhf->bhi', C, pq)
    return ReLiTState(C, s), num / (jnp.einsum('bhf,bhf->bh', s, pq)[..., None] + EPS)

  state, o = blocks.scan_along(step, state, _per_head(phi_k, phi_q, v, beta, gamma, keep), axis=2)
  return o, state


def _relit_parallel(gating, phi_k, phi_q, v, beta, gamma, keep, state):
  """Every position's state at once (an associative scan): parallel in time, memory T * Dh * F."""
  k = keep[..., None, None]
  C = blocks.linear_recurrence(_relit_decay(gating, beta, gamma) * k,
                               (beta * v)[..., :, None] * (gamma * phi_k)[..., None, :], state.C, axis=2)
  s = blocks.linear_recurrence((1.0 - gamma) * keep[..., None], gamma * phi_k, state.s, axis=2)
  return _readout(C, s, phi_q), ReLiTState(C[:, :, -1], s[:, :, -1])


def _relit_chunked(phi_k, phi_q, v, beta, gamma, keep, state, chunk):
  """Separable gating in chunks of c positions: inside a chunk the decays are cumulative sums in log
  space and the chunk's tokens interact through a [c, c] matrix; only the state at chunk boundaries is
  materialised (and, through jax.checkpoint, stored for the backward pass)."""
  B, H, T = v.shape[:3]
  pad = (-T) % chunk
  if pad:  # padded positions neither decay nor write: the state passes through them unchanged
    widen = lambda t, value=0.0: jnp.pad(t, [(0, 0), (0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 3),
                                         constant_values=value)
    phi_k, phi_q, v, beta, gamma = map(widen, (phi_k, phi_q, v, beta, gamma))
    keep = widen(keep, 1.0)
  keep = jnp.broadcast_to(keep, (B, H, T + pad))
  xs = tuple(blocks.chunks(t, chunk, axis=2) for t in (phi_k, phi_q, v, beta, gamma, keep))

  def one_chunk(st, xs, _):
    pk, pq, v_c, b, g, k = xs  # [B, H, c, ...]
    reset = k < 0.5
    seg = jnp.cumsum(reset.astype(jnp.int32), axis=-1)  # resets up to and including each position
    la = jnp.where(reset[..., None], 0.0, jnp.log1p(-b))  # log decay of C's rows, per position
    lb = jnp.where(reset[..., None], 0.0, jnp.log1p(-g))  # of C's columns and of s
    LA, LB = jnp.cumsum(la, axis=2), jnp.cumsum(lb, axis=2)
    t_idx = jnp.arange(chunk)
    valid = (t_idx[None, :] <= t_idx[:, None])[None, None] & (seg[..., :, None] == seg[..., None, :])
    pair = lambda L: jnp.exp(jnp.where(valid[..., None], L[:, :, :, None] - L[:, :, None, :], -jnp.inf))
    u, w = b * v_c, g * pk
    DB = pair(LB)  # [B, H, c(t), c(tau), F]
    S = jnp.einsum('bhtf,bhtuf,bhuf->bhtu', pq, DB, w)
    DA = pair(LA)  # [B, H, c, c, Dh]
    from_start = (seg == 0).astype(jnp.float32)  # the incoming state survives to t
    EA, EB = jnp.exp(LA) * from_start[..., None], jnp.exp(LB) * from_start[..., None]
    num = jnp.einsum('bhtui,bhui,bhtu->bhti', DA, u, S) + EA * jnp.einsum('bhif,bhtf->bhti', st.C, EB * pq)
    den = jnp.sum(S, axis=-1) + jnp.einsum('bhf,bhtf->bht', st.s, EB * pq)
    o = num / (den[..., None] + EPS)
    C = (EA[:, :, -1, :, None] * st.C * EB[:, :, -1, None, :]
         + jnp.einsum('bhui,bhuf->bhif', DA[:, :, -1] * u, DB[:, :, -1] * w))
    s = EB[:, :, -1] * st.s + jnp.einsum('bhuf->bhf', DB[:, :, -1] * w)
    return ReLiTState(C, s), o

  state, o = blocks.scan(one_chunk, state, xs, remat='full')  # only the chunk boundaries' states are stored
  return blocks.unchunk(o, axis=2)[:, :, :T], state


class AReLiT(nnx.Module):

  def __init__(self, d_model: int, num_heads: int, head_dim: int, eta: int, rank: int, rngs: nnx.Rngs, *,
               mode: str = 'fixed', gate_bias: float | None = None):
    if mode not in ('fixed', 'faithful'):
      raise ValueError(f"AReLiT mode must be 'fixed' or 'faithful', got {mode!r}")
    self.mode, self.rank = mode, rank
    self.period = 2 * (rank + 1)  # of the fixed mode's frequencies 2 pi k / period, k = 1..rank
    self.features = _Features(d_model, num_heads, head_dim, eta, rngs, gate_bias)

  def omegas(self) -> np.ndarray:
    if self.mode == 'faithful':
      return np.linspace(-np.pi, np.pi, self.rank).astype(np.float32)
    return (2 * np.pi * np.arange(1, self.rank + 1) / self.period).astype(np.float32)

  def init_state(self, batch: int) -> AReLiTState:
    f, r = self.features, self.rank
    F = f.eta * f.head_dim
    tau = jnp.zeros((batch,), jnp.int32 if self.mode == 'fixed' else jnp.float32)
    return AReLiTState(jnp.zeros((batch, f.num_heads, r, F), jnp.float32),
                       jnp.zeros((batch, f.num_heads, r, f.head_dim), jnp.float32),
                       jnp.zeros((batch, f.num_heads, F), jnp.float32), tau)

  def times(self, tau0_B: Array, reset_BxT: Array) -> Array:
    """The counter at every position [B, T] (the value each step uses), and so the next state's."""
    reset = jnp.asarray(reset_BxT, bool)
    T = reset.shape[1]
    if self.mode == 'faithful':  # the reference: a float32 count that never restarts
      return tau0_B[:, None] + jnp.arange(1, T + 1, dtype=jnp.float32)[None]
    idx = jnp.arange(T, dtype=jnp.int32)[None]
    last_reset = jax.lax.cummax(jnp.where(reset, idx, -1), axis=1)
    steps = jnp.where(last_reset >= 0, (idx - last_reset + 1) % self.period,
                      (tau0_B[:, None] % self.period + (idx + 1) % self.period) % self.period)
    return steps

  def cosines(self, tau_BxT: Array) -> Array:
    """cos(w_k tau) [B, T, r]; in the fixed mode tau < period, so the angle is exact in float32."""
    angle = tau_BxT.astype(jnp.float32)[..., None] * jnp.asarray(self.omegas())
    return jnp.cos(angle)

  def __call__(self, x_BxTxD: Array, state: AReLiTState, reset_BxT: Array, *, form: str = 'parallel'):
    """form: 'step' (a loop of single steps) or 'parallel' (associative scans over the factors)."""
    phi_k, phi_q, v, beta, gamma = self.features(x_BxTxD)
    keep = _keep(reset_BxT)
    tau = self.times(state.tau, reset_BxT)  # [B, T]
    cos = jnp.moveaxis(self.cosines(tau), 1, 2)[:, None]  # [B, 1, r, T]
    if form == 'step':
      o, K, V, s = _arelit_steps(phi_k, phi_q, v, beta, gamma, keep, cos, state)
    elif form == 'parallel':
      o, K, V, s = _arelit_parallel(phi_k, phi_q, v, beta, gamma, keep, cos, state)
    else:
      raise ValueError(f'unknown form {form!r}')
    return self.features.project_out(o), AReLiTState(K, V, s, tau[:, -1])


def _arelit_readout(K, V, s, pq, rank):
  num = jnp.einsum('bhtrf,bhtf,bhtri->bhti', K, pq, V)
  return num / (2 * rank * jnp.einsum('bhtf,bhtf->bht', s, pq)[..., None] + EPS)


def _arelit_parallel(phi_k, phi_q, v, beta, gamma, keep, cos, state):
  rank = cos.shape[2]
  cos_t = jnp.moveaxis(cos, 2, 3)  # [B, 1, T, r]
  K = blocks.linear_recurrence(jnp.broadcast_to(((1.0 - gamma) * keep[..., None])[:, :, :, None, :],
                                                phi_k.shape[:3] + (rank, phi_k.shape[-1])),
                               cos_t[..., None] * (gamma * phi_k)[:, :, :, None, :], state.K, axis=2)
  V = blocks.linear_recurrence(jnp.broadcast_to(((1.0 - beta) * keep[..., None])[:, :, :, None, :],
                                                v.shape[:3] + (rank, v.shape[-1])),
                               cos_t[..., None] * (beta * v)[:, :, :, None, :], state.V, axis=2)
  s = blocks.linear_recurrence((1.0 - gamma) * keep[..., None], gamma * phi_k, state.s, axis=2)
  o = _arelit_readout(K, V, s, phi_q, rank)
  return o, K[:, :, -1], V[:, :, -1], s[:, :, -1]


def _arelit_steps(phi_k, phi_q, v, beta, gamma, keep, cos, state):
  rank = cos.shape[2]

  def step(carry, xs):
    K, V, s = carry
    pk, pq, v_t, b, g, k, c = xs  # c: [B, 1, r]
    K = K * k[..., None, None]
    V = V * k[..., None, None]
    s = s * k[..., None]
    K = (1.0 - g)[:, :, None, :] * K + c[..., None] * (g * pk)[:, :, None, :]
    V = (1.0 - b)[:, :, None, :] * V + c[..., None] * (b * v_t)[:, :, None, :]
    s = (1.0 - g) * s + g * pk
    num = jnp.einsum('bhrf,bhf,bhri->bhi', K, pq, V)
    return (K, V, s), num / (2 * rank * jnp.einsum('bhf,bhf->bh', s, pq)[..., None] + EPS)

  (K, V, s), o = blocks.scan_along(step, (state.K, state.V, state.s),
                                   _per_head(phi_k, phi_q, v, beta, gamma, keep) + (jnp.moveaxis(cos, 3, 2),), axis=2)
  return o, K, V, s


class GRUGate(nnx.Module):
  """out = (1-z) x + z h with r = s(W_r y + U_r x), z = s(W_z y + U_z x - b), h = tanh(W_g y + U_g (r x));
  b starts at 2 so that the block starts near the identity."""

  def __init__(self, d_model: int, rngs: nnx.Rngs):
    self.w = layers.variance_scaling(rngs, (d_model, 3, d_model), in_axis=0)
    self.u = layers.variance_scaling(rngs, (d_model, 3, d_model), in_axis=0)
    self.bias = nnx.Param(jnp.full((d_model,), 2.0, jnp.float32))

  def __call__(self, x: Array, y: Array) -> Array:
    wy = jnp.einsum('btd,dge->gbte', y, self.w[...])
    u = self.u[...]
    r = jax.nn.sigmoid(wy[0] + x @ u[:, 0])
    z = jax.nn.sigmoid(wy[1] + x @ u[:, 1] - self.bias[...])
    h = jnp.tanh(wy[2] + (r * x) @ u[:, 2])
    return (1.0 - z) * x + z * h


class GatedBlock(nnx.Module):
  """The GTrXL-style block around a recurrent attention (identity-map reordering, GRU gates):
      a = ReLU(attn(LN(u)));  g1 = gate1(u, a);  out = gate2(g1, FFN(LN(g1)))"""

  def __init__(self, attention: nnx.Module, d_model: int, mlp_dim: int, rngs: nnx.Rngs):
    self.attention = attention
    self.norm1 = nnx.LayerNorm(d_model, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d_model, rngs=rngs)
    self.gate1, self.gate2 = GRUGate(d_model, rngs), GRUGate(d_model, rngs)
    self.ffn_in = layers.variance_scaling(rngs, (d_model, mlp_dim), in_axis=0)
    self.ffn_out = layers.variance_scaling(rngs, (mlp_dim, d_model), in_axis=0)

  def init_state(self, batch: int):
    return self.attention.init_state(batch)

  def __call__(self, u_BxTxD: Array, state, reset_BxT: Array, **kw):
    a, state = self.attention(self.norm1(u_BxTxD), state, reset_BxT, **kw)
    g1 = self.gate1(u_BxTxD, jax.nn.relu(a))
    f = jax.nn.relu(self.norm2(g1) @ self.ffn_in[...]) @ self.ffn_out[...]
    return self.gate2(g1, f), state


def state_bytes(state) -> int:
  """Bytes of a recurrent state (per batch as given)."""
  return int(sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state)))
