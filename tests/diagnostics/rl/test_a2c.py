"""A2C on the T-Maze: lambda-returns by hand, the update recomputes exactly the acting policy (sequence
form == the rollout's step form), and a few updates run finite for every core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from block_recurrent.diagnostics.rl import a2c, tmaze


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


def test_brt_cell_token_form_is_the_block_form_with_resets_anywhere():
  """The BRT policy core (its token form, one observation at a time) computes what the Block-Recurrent
  layer's segment form computes on the same inputs, and a reset at any step (not only at a block
  boundary) starts that row afresh, with blocks aligned from the reset on."""
  from flax import nnx

  cfg = a2c.A2CConfig(core='brt', d_model=16, num_heads=2, head_dim=8, window=4, states=3)
  cell = a2c._BRTCell(cfg, nnx.Rngs(0))  # pylint: disable=protected-access
  w, d = cfg.window, cfg.d_model
  x = jax.random.normal(jax.random.key(1), (2, 3 + 2 * w, d))
  reset = np.zeros((2, 3 + 2 * w), bool)
  reset[:, 0] = True
  reset[1, 3] = True  # row 1 starts a new episode at step 3, inside a block
  out, _ = jax.jit(cell)(x, cell.init_state(2), jnp.asarray(reset))

  model = cell.model
  model.embed = nnx.Param(jnp.eye(d) * np.sqrt(d))  # logits = the final norm's output
  whole, _ = model.apply_embedded(x[:, :2 * w], model.init_carry(2), jnp.ones((2,), bool))
  after, _ = model.apply_embedded(x[1:, 3:], model.init_carry(1), jnp.ones((1,), bool))
  np.testing.assert_allclose(out[0, :2 * w], whole[0], atol=1e-5)
  np.testing.assert_allclose(out[1, :3], whole[1, :3], atol=1e-5)  # before the reset, as row 0's form
  np.testing.assert_allclose(out[1, 3:], after[0], atol=1e-5)
  assert float(jnp.max(jnp.abs(out[1, 3:2 * w] - whole[1, 3:]))) > 1e-3  # the reset mattered


def test_diagnostic_command_runs_a_curriculum_and_writes_its_table(tmp_path, capsys):
  import json

  from block_recurrent.diagnostics.rl import diagnostic

  out = tmp_path / 'tmaze'
  assert diagnostic.main(['--cores', 'mlp', '--lengths', '6', '--updates', '2', '--curriculum', '3', '6', '9',
                          '--curriculum_updates', '1', '--envs', '2', '--rollout', '8', '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  assert '| mlp |' in printed and 'after 1 at each of [3, 6, 9] below it' in printed
  (row,) = json.loads(out.with_suffix('.json').read_text())
  assert row['curriculum'] == [3] and row['env_steps'] == (1 + 2) * 2 * 8  # only lengths below the final one
  with pytest.raises(SystemExit):
    diagnostic.main(['--lengths', '1'])
