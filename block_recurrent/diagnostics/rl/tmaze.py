"""The T-Maze memory task as pure JAX functions, so that rollouts run inside jax.jit and lax.scan.

A corridor of length L: the agent starts at position 0 and the junction is at L-1. Actions: 0 up,
1 down, 2 left, 3 right. The cue (up or down) is shown only in the first observation of an episode, so
the agent must carry it for L-1 steps. Observation (16 floats): cue one-hot (2; zeros after the first
step), the position as an 8-bit Gray code, 6 random distractor bits. Rewards: -0.1 per step; at the
junction, up or down ends the episode with +4 if it matches the cue and -1 if not; up or down elsewhere
and walking into a wall only cost the step. An episode is cut after `max_steps` steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3
NUM_ACTIONS = 4
OBS_DIM = 16
STEP_REWARD, CORRECT, WRONG = -0.1, 4.0, -1.0


class TMaze(NamedTuple):
  length: int = 120
  max_steps: int = 1000


class EnvState(NamedTuple):
  position: jax.Array  # int32
  cue: jax.Array  # int32: UP or DOWN
  t: jax.Array  # int32 steps taken in this episode
  key: jax.Array  # this episode's distractor stream


def gray_bits(position: jax.Array) -> jax.Array:
  gray = position ^ (position >> 1)
  return ((gray[..., None] >> jnp.arange(7, -1, -1)) & 1).astype(jnp.float32)


def observe(state: EnvState) -> jax.Array:
  first = state.t == 0
  cue = jnp.where(first, jax.nn.one_hot(state.cue, 2), jnp.zeros(2))
  noise = jax.random.bernoulli(jax.random.fold_in(state.key, state.t), 0.5, (6,)).astype(jnp.float32)
  return jnp.concatenate([cue, gray_bits(state.position), noise])


def reset(env: TMaze, key: jax.Array) -> tuple[EnvState, jax.Array]:
  cue_key, noise_key = jax.random.split(key)
  del env
  state = EnvState(position=jnp.int32(0), cue=jax.random.randint(cue_key, (), 0, 2, jnp.int32), t=jnp.int32(0),
                   key=noise_key)
  return state, observe(state)


def step(env: TMaze, state: EnvState, action: jax.Array):
  """(next state, its observation, reward, done) for one environment; the caller resets when done."""
  at_junction = state.position == env.length - 1
  turn = (action == UP) | (action == DOWN)
  ends = at_junction & turn
  moved = jnp.where(action == RIGHT, jnp.minimum(state.position + 1, env.length - 1),
                    jnp.where(action == LEFT, jnp.maximum(state.position - 1, 0), state.position))
  reward = jnp.where(ends, jnp.where(action == state.cue, CORRECT, WRONG), STEP_REWARD).astype(jnp.float32)
  nxt = state._replace(position=moved, t=state.t + 1)
  done = ends | (nxt.t >= env.max_steps)
  return nxt, observe(nxt), reward, done


def auto_reset_step(env: TMaze, state: EnvState, action: jax.Array, key: jax.Array):
  """step(), then a fresh episode in place of a finished one: (state, obs, reward, done) where obs is
  the new episode's first observation when done (as vectorised actor-critic rollouts want)."""
  nxt, obs, reward, done = step(env, state, action)
  fresh, fresh_obs = reset(env, key)
  state = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, nxt)
  return state, jnp.where(done, fresh_obs, obs), reward, done


def optimal_return(env: TMaze) -> float:
  """Walk right to the junction (L-1 steps at -0.1) and turn the right way (+4)."""
  return (env.length - 1) * STEP_REWARD + CORRECT
