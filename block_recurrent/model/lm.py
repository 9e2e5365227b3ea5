"""The decoder language model: (tokens, carry, start_of_sequence) -> (logits, carry).

    tokens [B, N] -> embed -> blocks of W tokens, scanned in order through all layers -> RMSNorm
                  -> logits = y @ E^T / sqrt(d)  (tied embedding; / sqrt(V) with logit_scale='sqrt_vocab')

The carry (model/carry.py) holds each layer's last keys/values and each recurrent layer's state. Inside a
segment it flows from block to block with gradients; between segments it is passed in and out by the
caller, and gradients stop at the segment boundary (truncated backpropagation through one segment).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import sharding
from block_recurrent.configs import ConfigError, ModelConfig
from block_recurrent.model import blocks, carry as carry_lib, layers, transformer

Array = jax.Array
Carry = carry_lib.Carry


ACTIVATIONS = ('batch', None, None)  # [B, N, d] between layers: rows split, the rest whole

# brt-eval --ablate_state: what the model may carry from before the current block or segment. The recurrent
# states restart from their learned initial value at every block or every segment. A Transformer-XL model
# (no state, one block per segment) carries its memory in the cache, so it is dropped there instead; a
# sliding-window model's previous block is its window, not memory, and stays.
ABLATIONS = ('none', 'reset_each_block', 'reset_each_segment')


class LanguageModel(nnx.Module):

  # The generation contract (model/prefill.py): the token form runs on a decode.DecodeState, converted
  # from the carry by decode.from_carry (GatedLanguageModel steps on its carry instead).
  STEPS_ON_CARRY = False

  def __init__(self, config: ModelConfig, rngs: nnx.Rngs):
    self.config = config
    self.embed = layers.normal(rngs, (config.vocab_size, config.d_model), 1.0)
    self.layers = nnx.List([transformer.Layer(config, config.layer_kind(i), rngs)
                            for i in range(config.total_layers)])
    self.final_norm = layers.RMSNorm(config.d_model)

  @property
  def recurrent_layers(self) -> list[transformer.Layer]:
    return [self.layers[i] for i in self.config.recurrent_indices]

  def init_carry(self, batch_size: int) -> Carry:
    """A carry for `batch_size` rows: empty caches (masked) and the learned initial states."""
    cfg = self.config
    keys, values = carry_lib.zeros_cache(cfg.total_layers, batch_size, cfg.window, cfg.key_heads,
                                         cfg.head_dim, jnp.dtype(cfg.dtype))
    states = tuple(jnp.broadcast_to(layer.state.initial[...], (batch_size,) + layer.state.initial.shape)
                   for layer in self.recurrent_layers)
    # With document_start_keys='zeros' a fresh cache is the reference's: zeros that are attended to.
    valid = jnp.full((batch_size,), cfg.document_start_keys == 'zeros')
    return Carry(keys=keys, values=values, cache_valid=valid, states=states)

  def check_inputs(self, tokens_BxN, carry: Carry, start_B) -> None:
    """Clear one-line errors for inputs that cannot work, before anything reaches XLA."""
    cfg = self.config
    shape = np.shape(tokens_BxN)
    if len(shape) != 2:
      raise ConfigError(f'tokens must be int32 [batch, length], got shape {shape}')
    b, n = shape
    if n < cfg.window:
      raise ConfigError(f'window {cfg.window} is larger than the segment ({n} tokens): '
                        f'pass at least {cfg.window} tokens or use a smaller window')
    if n % cfg.window:
      raise ConfigError(f'segment of {n} tokens is not a multiple of the window {cfg.window}: '
                        f'pad or cut it to a multiple of {cfg.window}')
    if np.shape(start_B) != (b,):
      raise ConfigError(f'start_of_sequence must be bool [{b}], got shape {np.shape(start_B)}')
    if carry.batch_size != b:
      raise ConfigError(f'carry is for batch size {carry.batch_size} but tokens have {b} rows: '
                        f'use model.init_carry({b})')
    if not isinstance(tokens_BxN, jax.core.Tracer):
      tokens = np.asarray(tokens_BxN)
      if not np.issubdtype(tokens.dtype, np.integer):
        raise ConfigError(f'tokens must be integer ids, got dtype {tokens.dtype}')
      if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
        raise ConfigError(f'token ids must lie in [0, {cfg.vocab_size}) for vocab_size {cfg.vocab_size}, '
                          f'got min {tokens.min()} max {tokens.max()}')

  def __call__(self, tokens_BxN: Array, carry: Carry, start_of_sequence_B: Array, *,
               deterministic: bool = True, dropout_key: Array | None = None, ablate_state: str = 'none'):
    """Logits [B, N, V] (float32) for one segment, and the carry for the next segment. ablate_state: one
    of ABLATIONS (evaluation only)."""
    self.check_inputs(tokens_BxN, carry, start_of_sequence_B)
    if not deterministic and dropout_key is None:
      raise ConfigError('deterministic=False needs a dropout_key (a jax.random key)')
    x = self.embed[...].astype(jnp.dtype(self.config.dtype))[tokens_BxN]
    return self.apply_embedded(x, carry, start_of_sequence_B, dropout_key=None if deterministic
                               else dropout_key, ablate_state=ablate_state)

  def apply_embedded(self, x_BxNxD: Array, carry: Carry, start_of_sequence_B: Array, *,
                     dropout_key: Array | None = None, ablate_state: str = 'none'):
    """The model from embedded inputs on: what causality is tested through (gradients wrt x)."""
    cfg = self.config
    if ablate_state not in ABLATIONS:
      raise ConfigError(f'ablate_state {ablate_state!r}: use one of {", ".join(ABLATIONS)}')
    x = x_BxNxD.astype(jnp.dtype(cfg.dtype))
    carry = self._start(carry, start_of_sequence_B, ablate_state)
    if cfg.feedback or cfg.block_major:
      carry, y = self._block_form(x, carry, dropout_key, fresh_state=ablate_state == 'reset_each_block')
    else:
      carry, y = self._segment_form(x, carry, dropout_key, fresh_state=ablate_state == 'reset_each_block')
    return self.logits(y), carry

  def _start(self, carry: Carry, start_of_sequence_B: Array, ablate_state: str = 'none') -> Carry:
    """The carry a segment starts from: gradients stopped, rows that start a document reset."""
    cfg = self.config
    initial = tuple(layer.state.initial[...] for layer in self.recurrent_layers)
    carry = jax.tree.map(jax.lax.stop_gradient, carry)
    carry = carry_lib.reset_where(carry, jnp.asarray(start_of_sequence_B, bool), initial,
                                  clear_all=cfg.always_clear_state, keep_cache=cfg.use_xl_cache,
                                  zero_keys_at_start=cfg.document_start_keys == 'zeros')
    if ablate_state == 'none':
      return carry
    carry = carry_lib.with_initial_states(carry, initial)
    if not initial and cfg.segment_length == cfg.window:  # Transformer-XL: its memory is the cache
      carry = carry._replace(keys=tuple(map(jnp.zeros_like, carry.keys)), values=tuple(map(jnp.zeros_like, carry.values)),
                             cache_valid=jnp.zeros_like(carry.cache_valid))
    return carry

  def diagnostics(self, tokens_BxN: Array, carry: Carry, start_of_sequence_B: Array) -> dict:
    """What a researcher watches in a recurrent model, from one segment (segment form, no dropout): per
    recurrent layer i, `gate_open/layer{i}` (the mean weight the state update gives the new input),
    `state_change/layer{i}` (|c' - c| / |c| per block) and `state_share/layer{i}` (the state's share of the
    attention output of the layer's tokens). Empty for models without a state; feedback models (block form
    only) are not covered."""
    cfg = self.config
    if not cfg.recurrent_indices or cfg.feedback:
      return {}
    x = self.embed[...].astype(jnp.dtype(cfg.dtype))[tokens_BxN]
    found: dict[int, dict] = {}
    self._segment_form(x, self._start(carry, start_of_sequence_B), None, stats=found)
    return {f'{name}/layer{i}': value for i, layer_stats in sorted(found.items())
            for name, value in layer_stats.items()}

  def logits(self, y_BxNxD: Array) -> Array:
    """Final RMSNorm and the tied output embedding: float32 logits [B, N, V]."""
    dtype = jnp.dtype(self.config.dtype)
    y = self.final_norm(y_BxNxD, dtype)
    return layers.product('bnd,vd->bnv', y, self.embed[...], dtype) / layers.logit_divisor(self.config)

  def _block_form(self, x_BxNxD: Array, carry: Carry, dropout_key: Array | None, fresh_state: bool = False):
    """The whole stack block by block (the step form): what feedback needs and generation will use.
    fresh_state: every block starts from the learned initial states (the reset_each_block ablation)."""
    cfg = self.config
    rec = cfg.recurrent_indices
    biases = [layer.bias_matrix(cfg.window) for layer in self.layers]
    initial = tuple(layer.state.initial[...] for layer in self.recurrent_layers)

    def step(c: Carry, x_BxWxD: Array, block_index: Array):
      if fresh_state:
        c = carry_lib.with_initial_states(c, initial)
      key = None if dropout_key is None else jax.random.fold_in(dropout_key, block_index)
      keys = layers.split_key(key, len(self.layers))
      proj = {i: self.layers[i].state.project(c.states[r]) for r, i in enumerate(rec)}
      feedback = proj[rec[0]] if cfg.feedback else None
      new_k, new_v, new_states = [], [], list(c.states)
      for i, layer in enumerate(self.layers):
        r = rec.index(i) if i in rec else None
        x_BxWxD, k, v, s = layer(
            x_BxWxD, c.keys[i], c.values[i], c.cache_valid, biases[i],
            state=None if r is None else c.states[r],
            state_proj=proj[i] if r is not None else feedback, dropout_key=keys[i])
        new_k.append(k)
        new_v.append(v)
        if r is not None:
          new_states[r] = s
      new_carry = Carry(keys=tuple(new_k), values=tuple(new_v),
                        cache_valid=jnp.ones_like(c.cache_valid), states=tuple(new_states))
      return new_carry, x_BxWxD

    return blocks.run_blocks(step, carry, x_BxNxD, cfg.window, unroll=cfg.unroll,
                             scan_unroll=cfg.scan_unroll, remat=cfg.remat)

  def _segment_form(self, x_BxNxD: Array, carry: Carry, dropout_key: Array | None, fresh_state: bool = False,
                    stats: dict | None = None):
    """Layer by layer over the whole segment (see Layer.segment); equal to the block-major form. stats: a
    dict that gets {layer index: that layer's diagnostics} (run without remat)."""
    cfg = self.config
    rec = cfg.recurrent_indices
    keys = layers.split_key(dropout_key, len(self.layers))
    new_k, new_v, new_states = [], [], list(carry.states)
    for i, layer in enumerate(self.layers):
      r = rec.index(i) if i in rec else None

      found = {} if stats is not None and r is not None else None

      def run(x, k_prev, v_prev, state, layer=layer, key=keys[i], found=found):
        return layer.segment(x, k_prev, v_prev, carry.cache_valid, layer.bias_matrix(cfg.window),
                             state=state, dropout_key=key, fresh_state=fresh_state, stats=found)

      state = None if r is None else carry.states[r]
      remat = cfg.remat if stats is None else 'none'
      x_BxNxD, k, v, s = blocks.checkpointed(run, remat)(x_BxNxD, carry.keys[i], carry.values[i], state)
      if found is not None:
        stats[i] = found
      x_BxNxD = sharding.constrain(x_BxNxD, ACTIVATIONS)
      new_k.append(k)
      new_v.append(v)
      if r is not None:
        new_states[r] = s
    valid = jnp.ones_like(carry.cache_valid)
    return Carry(tuple(new_k), tuple(new_v), valid, tuple(new_states)), x_BxNxD
