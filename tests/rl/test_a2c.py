"""A2C on the T-Maze: lambda-returns by hand, the update recomputes exactly the acting policy (sequence
form == the rollout's step form), and a few updates run finite for every core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from block_recurrent.rl import a2c, tmaze


def test_lambda_returns_by_hand():
  rewards = jnp.array([[1.0, 0.0, 2.0]])
  values = jnp.array([[0.5, 0.25, 1.0]])
  dones = jnp.array([[False, True, False]])
  adv, ret = a2c.lambda_returns(rewards, values, dones, jnp.array([3.0]), gamma=0.5, lam=0.5)
  d2 = 2.0 + 0.5 * 3.0 - 1.0  # the last step bootstraps from the value after the rollout
  d1 = 0.0 - 0.25  # the episode ends at step 1: no bootstrap, no trace across
  d0 = 1.0 + 0.5 * 0.25 - 0.5
  np.testing.assert_allclose(adv[0], [d0 + 0.25 * d1, d1, d2], rtol=1e-6)
  np.testing.assert_allclose(ret, adv + values, rtol=1e-6)


@pytest.mark.parametrize('core', a2c.CORES)
def test_update_recomputes_the_acting_policy_and_runs_finite(core):
  cfg = a2c.A2CConfig(core=core, d_model=16, num_heads=2, head_dim=8, memory=6, num_envs=4, rollout=12)
  init, update, rollout, loss_fn = a2c.make_trainer(cfg, tmaze.TMaze(length=4, max_steps=10))
  params, opt_state, runner = init()
  for _ in range(2):  # the second rollout starts from a carried, non-initial core state
    params, opt_state, runner, stats = update(params, opt_state, runner)
  assert all(np.isfinite(float(v)) for v in stats.values())
  assert float(stats['recomputed_value_gap']) <= 1e-5
  assert int(stats['correct'] + stats['wrong'] + stats['timeouts']) >= 1  # 4 envs x 12 steps, limit 10
