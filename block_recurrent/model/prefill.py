"""Reading a prompt, for both families: whole segments through the segment form, then the rest token by
token in a loop whose trip count is an argument. brt-generate compiles segment() once and rest() once
(on a prompt padded to one segment), whatever the prompt's length, and runs segment() once per segment,
so time is linear in the prompt and memory does not grow with it. prefill() is the same computation as
one traceable function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from block_recurrent.model import blocks, decode

Array = jax.Array


def token_forms(model):
  """(to_decode(carry, position_B), step(state, token_B, start_B)). A model that declares STEPS_ON_CARRY
  (gated_lm) decodes from its carry with its own step(); the attention family converts its carry with
  decode.from_carry."""
  if model.STEPS_ON_CARRY:
    return (lambda carry, position_B: carry), model.step
  return ((lambda carry, position_B: decode.from_carry(model, carry, position_B)),
          (lambda ds, token_B, start_B=None: decode.step(model, ds, token_B, start_B)))


def fresh_state(model, batch: int):
  """The token-form state of `batch` rows before any token: the carry or a decode.DecodeState."""
  return model.init_carry(batch) if model.STEPS_ON_CARRY else decode.init(model, batch)


def segment(model, carry, tokens_BxN: Array, start_B: Array):
  """One whole segment of the prompt: (float32 logits [B, V] after its last token, carry)."""
  logits, carry = model(tokens_BxN, carry, start_B)
  return logits[:, -1].astype(jnp.float32), carry


def rest(model, carry, logits_BxV: Array, tokens_BxT: Array, count, position):
  """The first `count` of tokens_BxT token by token, after `position` tokens read by segment(); count and
  position may be traced. Returns (logits [B, V] after the last token, logits_BxV if count is 0; the
  decode state). A document's first token (position 0) starts it, as in the segment form."""
  to_decode, step = token_forms(model)
  batch = tokens_BxT.shape[0]
  position = jnp.asarray(position, jnp.int32)
  state = to_decode(carry, jnp.full((batch,), position, jnp.int32))
  if tokens_BxT.shape[1] == 0:
    return logits_BxV.astype(jnp.float32), state

  def body(i, logits_state):
    token_B = jax.lax.dynamic_index_in_dim(tokens_BxT, i, axis=1, keepdims=False)
    logits, state = step(logits_state[1], token_B, jnp.full((batch,), position + i == 0))
    return logits.astype(jnp.float32), state

  return jax.lax.fori_loop(0, count, body, (logits_BxV.astype(jnp.float32), state))


def prefill(model, tokens_BxP: Array):
  """Reads a prompt at the start of a document: (logits [B, V] for the token after it, or None for an
  empty prompt; the decode state). Whole segments go through a scan of segment(), so segment boundaries
  fall where training put them; the rest goes through rest()."""
  cfg = model.config
  tokens = jnp.asarray(tokens_BxP, jnp.int32)
  batch, length = tokens.shape
  n = cfg.segment_length
  whole = length // n * n
  carry = model.init_carry(batch)
  logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
  if whole:
    first_SxB = jnp.broadcast_to((jnp.arange(whole // n) == 0)[:, None], (whole // n, batch))

    def body(logits_carry, xs, _):
      return segment(model, logits_carry[1], *xs), None

    (logits, carry), _ = blocks.scan(body, (logits, carry), (blocks.split_blocks(tokens[:, :whole], n), first_SxB))
  logits, state = rest(model, carry, logits, tokens[:, whole:], length - whole, whole)
  return (logits if length else None), state
