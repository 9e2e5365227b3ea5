"""block-recurrent: the Block-Recurrent Transformer and its baselines in JAX/Flax NNX."""

from block_recurrent.api import abstract_model, build_model, count_params, functional
from block_recurrent.configs import ConfigError, ModelConfig
from block_recurrent.generation import generate, generate_ids
from block_recurrent.model.carry import Carry
from block_recurrent.model.lm import LanguageModel

__all__ = ['abstract_model', 'build_model', 'count_params', 'functional', 'ConfigError', 'ModelConfig',
           'Carry', 'LanguageModel', 'generate', 'generate_ids']
