"""Advantage actor-critic with lambda-returns on the T-Maze, with any sequence layer as the policy core.

Rollouts run the core's step form inside one jitted lax.scan (environments included); the update runs
its sequence form over the same rollout from the core state the rollout started with, with resets at
episode starts, so the recomputed policy is the one that acted (tested). Cores: 'relit', 'arelit',
'gtrxl' (a GRU-gated block around each, as in relit.md), 'brt' (the Block-Recurrent Transformer's
recurrent layer, run by its token form: a window of W observations plus S recurrent states updated every
W steps) and 'mlp' (no memory: the baseline at chance).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from block_recurrent import configs
from block_recurrent.model import decode, gated_lm, layers, linear_recurrent as linrec
from block_recurrent.model.carry import DecodeState
from block_recurrent.model.lm import LanguageModel
from block_recurrent.diagnostics.rl import tmaze

CORES = ('relit', 'arelit', 'gtrxl', 'brt', 'mlp')


@dataclasses.dataclass(frozen=True)
class A2CConfig:
  core: str = 'arelit'
  d_model: int = 32
  num_heads: int = 2
  head_dim: int = 16
  eta: int = 2
  rank: int = 2
  memory: int = 32  # GTrXL's M
  gate_bias: float | None = None  # ReLiT/AReLiT: learned gate biases starting here (None: the paper's)
  window: int = 8  # the BRT cell's block length W
  states: int = 8  # the BRT cell's recurrent states S
  num_envs: int = 8
  rollout: int = 64
  gamma: float = 0.99
  lam: float = 0.95
  learning_rate: float = 1e-3
  entropy: float = 0.01
  value_coef: float = 0.5
  seed: int = 0


class _NoMemory(nnx.Module):
  """The memoryless baseline: a ReLU layer with an empty state."""

  def __init__(self, d: int, rngs: nnx.Rngs):
    self.kernel = layers.variance_scaling(rngs, (d, d), in_axis=0)

  def init_state(self, batch: int):
    return jnp.zeros((batch, 0), jnp.float32)

  def __call__(self, x, state, reset, **kw):
    del reset, kw
    return jax.nn.relu(x @ self.kernel[...]), state


class _BRTCell(nnx.Module):
  """One Block-Recurrent Transformer layer (recurrent: self-attention over the window and the cached
  previous block, cross-attention to S states, fixed gates, skip wiring) as a policy core. Acting and
  the update both run its token form (model/decode.py), whose outputs equal the block form's (tested
  there and in tests/rl/test_a2c.py); a reset at any step starts that row's episode afresh."""

  def __init__(self, cfg: 'A2CConfig', rngs: nnx.Rngs):
    model_cfg = configs.ModelConfig(vocab_size=1, num_layers=1, recurrent_layers=(0,), d_model=cfg.d_model,
                                    num_heads=cfg.num_heads, head_dim=cfg.head_dim, mlp_dim=4 * cfg.d_model,
                                    window=cfg.window, segment_length=cfg.window, num_states=cfg.states,
                                    dropout_rate=0.0)
    self.model = LanguageModel(model_cfg, rngs)

  def init_state(self, batch: int) -> DecodeState:
    return decode.init(self.model, batch)

  def __call__(self, x_BxTxD, state: DecodeState, reset_BxT, **kw):
    del kw

    def one(ds, xs):
      x, reset = xs
      y, ds = decode.step_embedded(self.model, ds, x[:, None], reset)
      return ds, y[:, 0]

    state, y = jax.lax.scan(one, state, (jnp.moveaxis(x_BxTxD, 1, 0), jnp.moveaxis(reset_BxT, 1, 0)))
    return self.model.final_norm(jnp.moveaxis(y, 0, 1)), state


class Policy(nnx.Module):

  def __init__(self, cfg: A2CConfig, rngs: nnx.Rngs):
    if cfg.core not in CORES:
      raise configs.ConfigError(f'unknown policy core {cfg.core!r}: choose one of {", ".join(CORES)}')
    self.kind = cfg.core
    self.inp = layers.variance_scaling(rngs, (tmaze.OBS_DIM, cfg.d_model), in_axis=0)
    if cfg.core == 'mlp':
      self.core = _NoMemory(cfg.d_model, rngs)
    elif cfg.core == 'brt':
      self.core = _BRTCell(cfg, rngs)
    else:
      model_cfg = configs.ModelConfig(d_model=cfg.d_model, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                                      mlp_dim=4 * cfg.d_model, sequence_layer=cfg.core, relit_eta=cfg.eta,
                                      arelit_rank=cfg.rank, gtrxl_memory=cfg.memory, dropout_rate=0.0,
                                      relit_gate_bias=cfg.gate_bias)
      self.core = linrec.GatedBlock(gated_lm.sequence_layer(model_cfg, cfg.core, rngs),
                                    cfg.d_model, 4 * cfg.d_model, rngs)
    self.pi = layers.variance_scaling(rngs, (cfg.d_model, tmaze.NUM_ACTIONS), in_axis=0, scale=0.01)
    self.v = layers.variance_scaling(rngs, (cfg.d_model, 1), in_axis=0)

  def init_state(self, batch: int):
    return self.core.init_state(batch)

  def __call__(self, obs_BxTxO, state, first_BxT):
    """(action logits [B, T, A], values [B, T], state); first marks an episode's first observation."""
    kw = {} if self.kind in ('gtrxl', 'mlp', 'brt') else {'form': 'step'} if obs_BxTxO.shape[1] == 1 else {}
    h, state = self.core(obs_BxTxO @ self.inp[...], state, first_BxT, **kw)
    return h @ self.pi[...], (h @ self.v[...])[..., 0], state


class Rollout(NamedTuple):
  obs: jax.Array  # [N, T, O]
  first: jax.Array  # [N, T] bool
  actions: jax.Array  # [N, T]
  rewards: jax.Array  # [N, T]
  dones: jax.Array  # [N, T]
  values: jax.Array  # [N, T] as the acting policy saw them
  last_value: jax.Array  # [N] value of the observation after the rollout


class Runner(NamedTuple):
  env: tmaze.EnvState  # batched over N
  obs: jax.Array  # [N, O]
  first: jax.Array  # [N]
  core: object  # the policy core's state
  key: jax.Array


def lambda_returns(rewards, values, dones, last_value, gamma: float, lam: float):
  """GAE(lambda) advantages and returns [N, T]; an episode's end cuts both the bootstrap and the trace."""
  def back(carry, xs):
    adv_next, value_next = carry
    r, v, d = xs
    cont = 1.0 - d.astype(jnp.float32)
    delta = r + gamma * value_next * cont - v
    adv = delta + gamma * lam * cont * adv_next
    return (adv, v), adv

  tm = lambda t: jnp.moveaxis(t, 1, 0)
  _, adv = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value), (tm(rewards), tm(values), tm(dones)),
                        reverse=True)
  adv = jnp.moveaxis(adv, 0, 1)
  return adv, adv + values


def make_trainer(cfg: A2CConfig, env: tmaze.TMaze):
  """(init() -> (params, opt_state, runner), update(params, opt_state, runner) -> (..., stats))."""
  policy = Policy(cfg, nnx.Rngs(cfg.seed))
  graphdef, params0 = nnx.split(policy)
  tx = optax.adam(cfg.learning_rate)

  def init():
    keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.num_envs + 1)
    env_state, obs = jax.vmap(lambda k: tmaze.reset(env, k))(keys[1:])
    runner = Runner(env_state, obs, jnp.ones((cfg.num_envs,), bool), policy.init_state(cfg.num_envs), keys[0])
    return params0, tx.init(params0), runner

  def rollout(params, runner: Runner):
    pol = nnx.merge(graphdef, params)

    def step(r: Runner, _):
      logits, value, core = pol(r.obs[:, None], r.core, r.first[:, None])
      key, act_key, env_key = jax.random.split(r.key, 3)
      action = jax.random.categorical(act_key, logits[:, 0])
      env_keys = jax.random.split(env_key, cfg.num_envs)
      env_state, obs, reward, done = jax.vmap(lambda s, a, k: tmaze.auto_reset_step(env, s, a, k))(
          r.env, action, env_keys)
      record = (r.obs, r.first, action, reward, done, value[:, 0])
      return Runner(env_state, obs, done, core, key), record

    start_core = runner.core
    runner, rec = jax.lax.scan(step, runner, None, length=cfg.rollout)
    rec = [jnp.moveaxis(t, 0, 1) for t in rec]
    _, last_value, _ = pol(runner.obs[:, None], runner.core, runner.first[:, None])
    return runner, start_core, Rollout(*rec, last_value=last_value[:, 0])

  def loss_fn(params, start_core, ro: Rollout):
    logits, values, _ = nnx.merge(graphdef, params)(ro.obs, start_core, ro.first)
    adv, returns = lambda_returns(ro.rewards, jax.lax.stop_gradient(ro.values), ro.dones, ro.last_value,
                                  cfg.gamma, cfg.lam)
    logp = jax.nn.log_softmax(logits)
    taken = jnp.take_along_axis(logp, ro.actions[..., None], -1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, -1).mean()
    policy_loss = -(taken * jax.lax.stop_gradient(adv)).mean()
    value_loss = jnp.mean((values - returns) ** 2)
    total = policy_loss + cfg.value_coef * value_loss - cfg.entropy * entropy
    return total, {'loss': total, 'entropy': entropy, 'value_loss': value_loss,
                   'recomputed_value_gap': jnp.max(jnp.abs(values - ro.values))}

  @jax.jit
  def update(params, opt_state, runner):
    runner, start_core, ro = rollout(params, runner)
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, start_core, ro)
    updates, opt_state = tx.update(grads, opt_state, params)
    ends = ro.dones & (ro.rewards != tmaze.STEP_REWARD)  # episodes that reached a turn at the junction
    stats = dict(stats, correct=jnp.sum(ends & (ro.rewards > 0)), wrong=jnp.sum(ends & (ro.rewards < 0)),
                 timeouts=jnp.sum(ro.dones & (ro.rewards == tmaze.STEP_REWARD)))
    runner = runner._replace(core=jax.lax.stop_gradient(runner.core))
    return optax.apply_updates(params, updates), opt_state, runner, stats

  return init, update, rollout, loss_fn
