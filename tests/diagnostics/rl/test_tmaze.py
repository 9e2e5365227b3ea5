"""The T-Maze environment on hand-checked trajectories: observations, rewards, termination, resets."""

import jax
import jax.numpy as jnp
import numpy as np

from block_recurrent.diagnostics.rl import tmaze


def _walk(env, key, actions):
  state, obs = tmaze.reset(env, key)
  trace = [(np.asarray(obs), None, None)]
  for a in actions:
    state, obs, reward, done = tmaze.step(env, state, jnp.int32(a))
    trace.append((np.asarray(obs), round(float(reward), 6), bool(done)))
  return state, trace


def test_cue_only_in_the_first_observation_and_gray_coded_positions():
  env = tmaze.TMaze(length=5, max_steps=50)
  state, trace = _walk(env, jax.random.key(0), [tmaze.RIGHT] * 3)
  first = trace[0][0]
  assert first.shape == (tmaze.OBS_DIM,) and first[:2].sum() == 1
  assert first[:2].argmax() == int(tmaze.reset(env, jax.random.key(0))[0].cue)
  for obs, _, _ in trace[1:]:
    assert obs[:2].tolist() == [0.0, 0.0]
  # positions 0, 1, 2, 3 -> Gray codes 0, 1, 3, 2 in 8 bits, most significant first
  codes = [int(''.join(str(int(b)) for b in obs[2:10]), 2) for obs, _, _ in trace]
  assert codes == [0, 1, 3, 2]
  assert set(np.unique(np.stack([o[10:] for o, _, _ in trace]))) <= {0.0, 1.0}
  assert int(state.position) == 3


def test_rewards_for_the_right_turn_the_wrong_turn_and_walls():
  env = tmaze.TMaze(length=4, max_steps=50)
  key = jax.random.key(3)
  cue = int(tmaze.reset(env, key)[0].cue)
  right_turn, wrong_turn = cue, 1 - cue
  _, trace = _walk(env, key, [tmaze.LEFT, right_turn, tmaze.RIGHT, tmaze.RIGHT, tmaze.RIGHT, right_turn])
  rewards = [r for _, r, _ in trace[1:]]
  dones = [d for _, _, d in trace[1:]]
  assert rewards == [-0.1] * 5 + [4.0] and dones == [False] * 5 + [True]  # wall and early turn only cost
  _, trace = _walk(env, key, [tmaze.RIGHT] * 3 + [wrong_turn])
  assert [r for _, r, _ in trace[1:]] == [-0.1, -0.1, -0.1, -1.0] and trace[-1][2]
  ret = sum(r for _, r, _ in _walk(env, key, [tmaze.RIGHT] * 3 + [right_turn])[1][1:])
  assert abs(ret - tmaze.optimal_return(env)) < 1e-6


def test_time_limit_and_auto_reset_under_jit():
  env = tmaze.TMaze(length=10, max_steps=4)
  state, _ = tmaze.reset(env, jax.random.key(1))
  step = jax.jit(lambda s, a, k: tmaze.auto_reset_step(env, s, a, k))
  dones = []
  for i in range(5):
    state, obs, reward, done = step(state, jnp.int32(tmaze.LEFT), jax.random.key(100 + i))
    dones.append(bool(done))
  assert dones == [False, False, False, True, False]  # cut at 4 steps, then a new episode
  assert int(state.t) == 1 and int(state.position) == 0
