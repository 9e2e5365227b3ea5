"""Test setup: 8 fake CPU devices and no cloud look-ups, both before jax is imported anywhere."""

import atexit
import os
import shutil
import tempfile

# Tiny models: compilation dominates, so LLVM's optimisation passes are turned down (both sides of every
# equivalence are compiled the same way; benchmarks never use this).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('NO_GCE_CHECK', 'true')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# tests/train/test_aot.py and tests/cli/test_compile.py both load libtpu to compile for TPU slices, and
# the two xdist workers may run them at once: libtpu's lockfile would refuse the second process.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `import helpers`

# A compilation cache private to this test process (each xdist worker has its own) and deleted when it
# exits: a program compiled twice with the same HLO (each in-process brt-train, brt-eval and brt-generate
# call builds its jitted steps anew) is compiled once. Set through jax.config, not the environment, so
# that the brt-train subprocesses some tests start do not share it.
_CACHE = tempfile.mkdtemp(prefix='brt-test-jax-cache-')
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update('jax_compilation_cache_dir', _CACHE)

# The longest modules first, so that both workers stay busy to the end: with `-n 2 --dist loadfile` each
# module runs whole on one worker, and a free worker takes the next module in this order (kept: see
# pytest_configure). Roughly by their seconds on 2 busy cores (model/test_lm.py ~300, train/test_faults.py
# ~250, test_sharding.py ~150, ...); the short modules after them fill the gaps in any order.
_LONG_FIRST = ('model/test_lm.py', 'train/test_faults.py', 'test_tiny_experiments.py', 'test_sharding.py', 'train/test_loop.py',
               'model/test_gated_lm.py', 'model/test_decode.py', 'train/test_multiprocess.py',
               'model/test_linear_recurrent.py', 'diagnostics/rl/test_a2c.py', 'test_flops.py', 'cli/test_eval.py',
               'cli/test_generate.py', 'cli/test_train.py', 'test_configs.py', 'data/test_segments_fuzz.py',
               'cli/test_compare.py', 'diagnostics/test_recall.py', 'test_launch.py', 'model/test_attention.py')


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory):
  """One tiny 2-step run with checkpoints at steps 1 and 2, trained once per test process for the commands'
  bad-input and flag-value cases (tests/bad_inputs.py, tests/flag_values.py; a case that damages the run
  works on a copy)."""
  import bad_inputs  # pylint: disable=import-outside-toplevel  (imports every command)
  return bad_inputs.train_tiny_run(tmp_path_factory.mktemp('trained') / 'run')


def pytest_configure(config):
  # pytest-xdist >= 3.2 reorders loadfile's modules by their number of tests (most first) unless told not
  # to, which started the 3-test fault-injection module among the last.
  if hasattr(config.option, 'loadscopereorder'):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(session, config, items):
  del session, config

  def rank(item):
    path = str(item.fspath).replace(os.sep, '/')
    for i, name in enumerate(_LONG_FIRST):
      if path.endswith('tests/' + name):
        return i
    return len(_LONG_FIRST)

  items.sort(key=rank)  # stable: the order within a module and among the rest is kept
