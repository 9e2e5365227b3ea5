"""Test setup: 8 fake CPU devices and no cloud look-ups, both before jax is imported anywhere."""

import os

# Tiny models: compilation dominates, so LLVM's optimisation passes are turned down (both sides of every
# equivalence are compiled the same way; benchmarks never use this).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('NO_GCE_CHECK', 'true')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `import helpers`

# The longest modules first: with `-n 2 --dist loadfile` each module runs whole on one worker in
# collection order, so starting the long ones early keeps both workers busy to the end.
_LONG_FIRST = ('train/test_faults.py', 'train/test_multiprocess.py', 'train/test_loop.py', 'test_bad_input.py',
               'test_compare.py', 'model/test_linear_lm.py', 'rl/test_a2c.py',
               'test_sharding.py', 'model/test_decode.py', 'model/test_linear_recurrent.py')


def pytest_collection_modifyitems(session, config, items):
  del session, config

  def rank(item):
    path = str(item.fspath).replace(os.sep, '/')
    for i, name in enumerate(_LONG_FIRST):
      if path.endswith('tests/' + name):
        return i
    return len(_LONG_FIRST)

  items.sort(key=rank)  # stable: the order within a module and among the rest is kept
