"""The FLOP/s that MFU is stated against, chosen so that it does not move with the load of the moment.

- Accelerators: the vendor's stated dense bfloat16 peak of the device kind (table below).
- CPU: there is no trustworthy stated figure (a VM's cores, clocks and vector units are not what the
  host's name says), so the best of several timed 2048^3 float32 matmuls is measured once per process.
  The best case is what the host does when nothing else runs; a single timing (what this replaced) fell
  with whatever else the host was doing, so the same run logged MFU 55% once and 19% another time.
  brt-train measures it once per workdir and keeps it in DIR/peak.json, so a resumed run reports MFU
  against the same number.
- `TrainConfig.peak_flops` > 0 overrides both: the way to compare MFU across runs and machines.
"""

from __future__ import annotations

import functools
import time

# FLOP/s per device, dense bfloat16, as the vendors state them.
STATED_BF16 = {
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12, 'TPU v5': 459e12,
    'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
    'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12, 'NVIDIA A100': 312e12, 'NVIDIA L4': 121e12,
}


def stated(device_kind: str) -> float | None:
  """The stated peak of a device kind (longest matching prefix), or None."""
  hits = [k for k in STATED_BF16 if device_kind.startswith(k)]
  return STATED_BF16[max(hits, key=len)] if hits else None


def measure_cpu(repeats: int = 7, size: int = 2048) -> float:
  """Best of `repeats` timings of a size^3 float32 matmul on the default device, in FLOP/s."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jnp.ones((size, size), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * size ** 3 / best


@functools.lru_cache(maxsize=None)
def _cpu_of_this_process() -> float:
  return measure_cpu()


def peak_flops(device_kind: str, platform: str, override: float = 0.0) -> tuple[float, str]:
  """(FLOP/s, how it was obtained) for MFU on this device."""
  if override > 0:
    return override, 'TrainConfig.peak_flops'
  if platform != 'cpu':
    value = stated(device_kind)
    if value is not None:
      return value, f'the stated bf16 peak of {device_kind}'
  return _cpu_of_this_process(), 'the best of 7 timed 2048^3 float32 matmuls on this host'
