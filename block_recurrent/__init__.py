"""block-recurrent: the Block-Recurrent Transformer and its baselines in JAX/Flax NNX.

The names below load on first use, so that `python -m block_recurrent.cli.train` (brt-train) can install its
preemption handlers and check its flags before jax and TensorFlow are imported.

Importing the package first chooses the JAX platforms (block_recurrent/platforms.py): with libtpu
installed on a machine without a TPU, jax starts only the CPU (or GPU) backend.
"""

import importlib

from block_recurrent import platforms as _platforms

_platforms.select()

_EXPORTS = {
    'abstract_model': 'block_recurrent.api', 'build_model': 'block_recurrent.api',
    'count_params': 'block_recurrent.api', 'functional': 'block_recurrent.api',
    'ConfigError': 'block_recurrent.configs', 'ModelConfig': 'block_recurrent.configs',
    'generate': 'block_recurrent.generation', 'generate_ids': 'block_recurrent.generation',
    'Carry': 'block_recurrent.model.carry', 'LanguageModel': 'block_recurrent.model.lm',
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
  return sorted(list(globals()) + __all__)
