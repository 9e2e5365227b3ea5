"""Which JAX platforms to start, decided before jax is imported.

The `tpu` extra installs libtpu everywhere (it also lets a CPU machine compile for a named TPU slice:
brt-compile). On a machine with no TPU, jax would still try to start libtpu at its first use: a second or
so of start-up and lines of TPU-worker warnings on stderr. So when libtpu is installed, no TPU device is
attached and JAX_PLATFORMS is unset, we set it to the platforms that are here ('cpu', or 'cuda,cpu' with
the CUDA plugin). A JAX_PLATFORMS of the user's own is always kept. No jax import happens here.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_CUDA_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin')


def tpu_attached() -> bool:
  """A TPU VM exposes its chips as /dev/accel* (v2-v4) or /dev/vfio/N (v5e, v5p, v6e)."""
  return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def _installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def select(environ=os.environ, *, tpu: bool | None = None) -> str | None:
  """Sets JAX_PLATFORMS in environ when libtpu is installed but no TPU is attached; returns what it set."""
  if environ.get('JAX_PLATFORMS') or not _installed('libtpu'):
    return None
  if tpu_attached() if tpu is None else tpu:
    return None
  platforms = 'cuda,cpu' if any(_installed(p) for p in _CUDA_PLUGINS) else 'cpu'
  environ['JAX_PLATFORMS'] = platforms
  if environ is os.environ and 'jax' in sys.modules:  # imported before us: effective until a backend starts
    sys.modules['jax'].config.update('jax_platforms', platforms)
  return platforms
