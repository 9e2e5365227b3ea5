"""The one place that turns a ModelConfig into a model of either family: the attention family
(lm.LanguageModel, Block-Recurrent Transformer blocks) or the gated family (gated_lm.GatedLanguageModel:
GRU-gated ReLiT, AReLiT or GTrXL layers). Both keep one contract: `logits, carry = model(tokens, carry,
start_of_sequence)` with `model.init_carry(batch)`, the carry types of model/carry.py.
"""

from __future__ import annotations

from flax import nnx

from block_recurrent.configs import ModelConfig
from block_recurrent.model.gated_lm import GatedLanguageModel
from block_recurrent.model.lm import LanguageModel


def build(config: ModelConfig, rngs: nnx.Rngs) -> LanguageModel | GatedLanguageModel:
  """The model a config describes: LanguageModel for the attention family, else GatedLanguageModel."""
  if config.sequence_layer == 'attention':
    return LanguageModel(config, rngs)
  return GatedLanguageModel(config, rngs)
