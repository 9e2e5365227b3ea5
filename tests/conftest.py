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
