"""brt-generate (block_recurrent/cli/generate.py): its bad inputs and bad flag values (the cases of the
tables in docs/reliability.md, kept in tests/bad_inputs.py and tests/flag_values.py) are each one line on
stderr with exit status 2, and the sampling flags' checks accept the edges of their ranges."""

import argparse

import pytest

import bad_inputs

from block_recurrent import configs
from block_recurrent.cli.generate import _check_sampling, _check_top_k
from block_recurrent.train import distributed

# Orbax leaves the reads of a truncated checkpoint's arrays as coroutines that are collected later.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

test_bad_input_is_one_clear_line, test_bad_flag_value_is_one_line_and_exit_2 = bad_inputs.command_tests('brt-generate')


def test_good_values_at_the_bounds_pass():
  """The checks reject only what cannot work: the edges of each range are accepted (brt-generate's sampling
  flags, and brt-train's process-group flags, which train/distributed.py checks)."""
  for address in ('localhost:1', '10.0.0.2:8476', '[::1]:65535', 'tpu-worker-0.internal:8476'):
    distributed.check_args(address, 2, 1)
  distributed.check_args('localhost:1234', 1, 0)
  distributed.check_args(None, None, None)
  distributed.check_args(auto=True)
  for seed in (0, 2 ** 32 - 1):
    _check_sampling(argparse.Namespace(max_new_tokens=0, temperature=0.0, top_k=0, top_p=1.0, seed=seed))
  _check_top_k(260, configs.ModelConfig(vocab_size=260), 'run')
  with pytest.raises(configs.ConfigError, match='--top_k 261'):
    _check_top_k(261, configs.ModelConfig(vocab_size=260), 'run')
