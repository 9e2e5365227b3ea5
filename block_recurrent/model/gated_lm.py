"""A language model whose layers are GRU-gated blocks around ReLiT, AReLiT or GTrXL attention
(ModelConfig.sequence_layer), with the same contract as LanguageModel, so brt-train, brt-eval and
brt-generate use it unchanged:

    logits, carry = model(tokens [B, T], carry, start_of_sequence [B])

T may be any length (the layers have no blocks); T=1 is the step form generation uses. The carry holds
each layer's recurrent state (ReLiT's C and s, AReLiT's factors and counter, GTrXL's key/value cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import sharding
from block_recurrent.configs import ConfigError, ModelConfig
from block_recurrent.model import gtrxl, layers, linear_recurrent as linrec, prefill as prefill_lib
from block_recurrent.model.carry import LayerStates

Array = jax.Array


def sequence_layer(cfg: ModelConfig, kind: str, rngs: nnx.Rngs):
  """The ReLiT, AReLiT or GTrXL layer of kind `kind` with the config's sizes and options."""
  d, h, hd = cfg.d_model, cfg.num_heads, cfg.head_dim
  if kind == 'relit':
    return linrec.ReLiT(d, h, hd, cfg.relit_eta, rngs, gating=cfg.relit_gating, chunk=cfg.relit_chunk,
                        gate_bias=cfg.relit_gate_bias)
  if kind == 'arelit':
    return linrec.AReLiT(d, h, hd, cfg.relit_eta, cfg.arelit_rank, rngs, mode=cfg.arelit_mode,
                         gate_bias=cfg.relit_gate_bias)
  return gtrxl.GTrXLAttention(d, h, hd, cfg.gtrxl_memory, rngs, mask='step')


class GatedLanguageModel(nnx.Module):
  """GRU-gated blocks (linear_recurrent.GatedBlock) around ReLiT, AReLiT or GTrXL, one kind per layer."""

  # The generation contract (model/prefill.py): this model's carry is its token-form state, and step()
  # advances it one token, so generation decodes from the carry as it is.
  STEPS_ON_CARRY = True

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    self.embed = layers.normal(rngs, (config.vocab_size, config.d_model), 1.0)
    self.kinds = tuple(config.linear_kind(i) for i in range(config.total_layers))
    self.blocks = nnx.List([linrec.GatedBlock(sequence_layer(config, kind, rngs), config.d_model, config.mlp_dim,
                                              rngs) for kind in self.kinds])
    self.final_norm = layers.RMSNorm(config.d_model)

  def init_carry(self, batch_size: int) -> LayerStates:
    return LayerStates(tuple(block.init_state(batch_size) for block in self.blocks))

  def check_inputs(self, tokens_BxT, carry: LayerStates, start_B) -> None:
    shape = np.shape(tokens_BxT)
    if len(shape) != 2 or shape[1] < 1:
      raise ConfigError(f'tokens must be int32 [batch, length >= 1], got shape {shape}')
    if np.shape(start_B) != (shape[0],):
      raise ConfigError(f'start_of_sequence must be bool [{shape[0]}], got shape {np.shape(start_B)}')
    if carry.batch_size != shape[0]:
      raise ConfigError(f'carry is for batch size {carry.batch_size} but tokens have {shape[0]} rows: '
                        f'use model.init_carry({shape[0]})')
    if not isinstance(tokens_BxT, jax.core.Tracer):
      tokens = np.asarray(tokens_BxT)
      if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
        raise ConfigError(f'token ids must lie in [0, {self.config.vocab_size}), got {tokens.min()} .. {tokens.max()}')

  def __call__(self, tokens_BxT: Array, carry: LayerStates, start_of_sequence_B: Array, *,
               deterministic: bool = True, dropout_key: Array | None = None):
    """Logits [B, T, V] (float32) and the carry after the T tokens; start rows begin a new document."""
    del deterministic, dropout_key  # no dropout in these layers (the config requires dropout_rate 0)
    self.check_inputs(tokens_BxT, carry, start_of_sequence_B)
    cfg = self.config
    batch, length = tokens_BxT.shape
    reset = jnp.zeros((batch, length), bool).at[:, 0].set(jnp.asarray(start_of_sequence_B, bool))
    carry = jax.tree.map(jax.lax.stop_gradient, carry)  # truncated backpropagation, as LanguageModel
    x = self.embed[...][tokens_BxT]
    states = []
    for kind, block, state in zip(self.kinds, self.blocks, carry.states):
      kw = {} if kind == 'gtrxl' else {'form': 'step'} if length == 1 else {}
      x, state = block(x, state, reset, **kw)
      x = sharding.constrain(x, ('batch', None, None))
      states.append(state)
    y = self.final_norm(x)
    logits = jnp.einsum('btd,vd->btv', y, self.embed[...]) / layers.logit_divisor(cfg)
    return logits, LayerStates(tuple(states))

  def prefill(self, tokens_BxP: Array):
    return prefill_lib.prefill(self, tokens_BxP)

  def step(self, carry: LayerStates, token_B: Array, start_B: Array | None = None):
    start = jnp.zeros(token_B.shape, bool) if start_B is None else start_B
    logits, carry = self(token_B[:, None], carry, start)
    return logits[:, 0], carry

