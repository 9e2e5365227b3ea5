"""model/blocks.py, the one owner of splitting, windows, scans, chunking, linear recurrences and remat:
each helper against the plain NumPy or Python-loop computation it replaces (the model-level equivalences,
segment == block form, scan == loop, step == chunked == parallel, run through these in tests/model)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from block_recurrent.model import blocks

RNG = np.random.default_rng(0)


def _x(*shape):
  return jnp.asarray(RNG.normal(size=shape), jnp.float32)


def test_split_merge_and_by_block_are_the_reshapes_they_name():
  x = _x(2, 12, 3)
  split = blocks.split_blocks(x, 4)
  assert split.shape == (3, 2, 4, 3)
  np.testing.assert_array_equal(split[1, 0], x[0, 4:8])
  np.testing.assert_array_equal(blocks.merge_blocks(split), x)
  np.testing.assert_array_equal(blocks.by_block(x, 4)[1, 2], x[1, 8:12])


def test_windows_put_the_previous_block_in_front_and_mark_the_carried_one():
  k, v = _x(2, 3, 4, 5), _x(2, 3, 4, 5)  # [B, T, W, D]
  k_prev, v_prev = _x(2, 4, 5), _x(2, 4, 5)
  kw, vw, valid = blocks.windows(k, v, k_prev, v_prev, jnp.array([True, False]))
  assert kw.shape == vw.shape == (2, 3, 8, 5) and valid.shape == (2, 3, 8)
  np.testing.assert_array_equal(kw[:, 0], np.concatenate([k_prev, k[:, 0]], axis=1))
  np.testing.assert_array_equal(vw[:, 2], np.concatenate([v[:, 1], v[:, 2]], axis=1))
  np.testing.assert_array_equal(valid[0], np.ones((3, 8), bool))
  np.testing.assert_array_equal(valid[1, 0], np.r_[np.zeros(4, bool), np.ones(4, bool)])  # carried block not valid
  np.testing.assert_array_equal(valid[1, 1:], np.ones((2, 8), bool))


def _step(c, x, t):
  c = c * 0.5 + jnp.sin(x).sum(-1) + t
  return c, c * x.mean()


@pytest.mark.parametrize('remat', ['none', 'full', 'dots'])
def test_scan_equals_the_python_loop_in_value_and_gradient(remat):
  xs, c0 = _x(5, 3, 2), _x(3)

  def total(c, xs, unroll):
    c, ys = blocks.scan(_step, c, xs, unroll=unroll, remat=remat)
    return jnp.sum(c) + jnp.sum(ys ** 2)

  c, ys = c0, []
  for t in range(5):
    c, y = _step(c, xs[t], t)
    ys.append(y)
  got_c, got_ys = blocks.scan(_step, c0, xs, remat=remat)
  np.testing.assert_allclose(got_c, c, rtol=1e-6)
  np.testing.assert_allclose(got_ys, jnp.stack(ys), rtol=1e-6)
  g_scan = jax.grad(total, argnums=(0, 1))(c0, xs, False)
  g_loop = jax.grad(total, argnums=(0, 1))(c0, xs, True)
  for a, b in zip(g_scan, g_loop):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_run_blocks_and_scan_along_keep_the_time_axis_where_it_was():
  x = _x(2, 6, 3)
  carry, y = blocks.run_blocks(lambda c, xb, t: (c + xb.sum(), xb * c), jnp.zeros(()), x, 2)
  expected, c = [], 0.0
  for b in range(3):
    expected.append(np.asarray(x[:, 2 * b:2 * b + 2]) * c)
    c += float(x[:, 2 * b:2 * b + 2].sum())
  np.testing.assert_allclose(y, np.concatenate(expected, axis=1), rtol=1e-5)
  np.testing.assert_allclose(carry, c, rtol=1e-5)
  cum, out = blocks.scan_along(lambda c, xt: (c + xt, c + xt), jnp.zeros((2, 3)), x, axis=1)
  np.testing.assert_allclose(out, np.cumsum(np.asarray(x), axis=1), rtol=1e-5)
  np.testing.assert_allclose(cum, np.asarray(x).sum(1), rtol=1e-5)


def test_chunks_and_unchunk_round_trip_on_any_axis():
  x = _x(2, 3, 12, 5)
  c = blocks.chunks(x, 4, axis=2)
  assert c.shape == (3, 2, 3, 4, 5)
  np.testing.assert_array_equal(c[2], x[:, :, 8:12])
  np.testing.assert_array_equal(blocks.unchunk(c, axis=2), x)


def test_linear_recurrence_equals_the_sequential_update():
  decay, update, h0 = jax.nn.sigmoid(_x(2, 3, 7, 4)), _x(2, 3, 7, 4), _x(2, 3, 4)
  got = blocks.linear_recurrence(decay, update, h0, axis=2)
  h, want = np.asarray(h0), []
  for t in range(7):
    h = np.asarray(decay[:, :, t]) * h + np.asarray(update[:, :, t])
    want.append(h)
  np.testing.assert_allclose(got, np.stack(want, axis=2), rtol=1e-5, atol=1e-6)


def test_checkpointed_changes_no_value_or_gradient_and_none_is_the_function_itself():
  f = lambda w, x: jnp.sum(jnp.tanh(x @ w) @ w.T)
  w, x = _x(4, 4), _x(3, 4)
  assert blocks.checkpointed(f, 'none') is f
  for policy in blocks.REMAT_POLICIES:
    g = blocks.checkpointed(f, policy)
    np.testing.assert_allclose(g(w, x), f(w, x), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(g)(w, x), jax.grad(f)(w, x), rtol=1e-5)
