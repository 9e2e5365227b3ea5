"""Test setup: 8 fake CPU devices and no cloud look-ups, both before jax is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('NO_GCE_CHECK', 'true')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # for `import helpers`
