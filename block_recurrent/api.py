"""The small public API: build a model from gin, and a jitted functional form of it.

    import block_recurrent as brt
    model = brt.build_model(gin_files=['gin/experiments/tiny/rec_fixed_skip.gin'], seed=0)
    carry = model.init_carry(batch_size)
    logits, carry = model(tokens, carry, start_of_sequence)
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from block_recurrent import configs, ginconf
from block_recurrent.model import factory
from block_recurrent.model.lm import LanguageModel


def build_model(gin_files: Sequence[str] = (), gin_params: Sequence[str] = (), seed: int = 0,
                config: configs.ModelConfig | None = None) -> LanguageModel:
  """A freshly initialised model; the config comes from gin unless one is given."""
  if config is None:
    config = ginconf.model_config(gin_files, gin_params)
  return factory.build(config, nnx.Rngs(params=seed))


def abstract_model(config: configs.ModelConfig) -> LanguageModel:
  """The model with ShapeDtypeStructs instead of weights: shapes and counts without any memory."""
  return nnx.eval_shape(lambda: factory.build(config, nnx.Rngs(params=0)))


def count_params(model: LanguageModel) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def functional(model: LanguageModel):
  """(params, apply, graphdef); `apply(params, tokens, carry, start[, dropout_key]) -> (logits, carry)`.

  The functional core that training and tests use: parameters are a pytree, the module structure is
  fixed, and every call with the same shapes reuses one compilation.
  """
  graphdef, params = nnx.split(model)

  @jax.jit
  def apply(params, tokens_BxN, carry, start_B, dropout_key=None):
    return nnx.merge(graphdef, params)(tokens_BxN, carry, start_B, deterministic=dropout_key is None,
                                       dropout_key=dropout_key)

  def checked_apply(params, tokens_BxN, carry, start_B, dropout_key=None):
    model.check_inputs(tokens_BxN, carry, start_B)
    return apply(params, tokens_BxN, carry, start_B, dropout_key)

  return params, checked_apply, graphdef
