"""Multi-process runs: JAX's distributed runtime, and the few cross-process agreements the loop needs.

    brt-train ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I   (explicit)
    brt-train ... --distributed                            (JAX finds the cluster: Cloud TPU, SLURM, ...)
    brt-train ...                                          (also automatic on a multi-worker Cloud TPU VM)

On a Cloud TPU VM slice with more than one worker, `jax.distributed.initialize()` finds the coordinator
and this worker's id itself; elsewhere a multi-process run names them. On CPU the processes talk through
gloo collectives (what the multi-process tests on one machine use).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from block_recurrent.configs import ConfigError


def on_multi_worker_tpu() -> bool:
  """A Cloud TPU VM slice with several workers (the TPU runtime sets these for every worker)."""
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  return len([h for h in hosts.split(',') if h]) > 1


MAX_PROCESSES = 2 ** 31 - 1  # JAX's process count and ids are C ints


def check_args(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """The multi-process flags, checked before anything starts (no JAX call): a ConfigError names the flag."""
  explicit = (coordinator_address, num_processes, process_id)
  if auto and any(v is not None for v in explicit):
    raise ConfigError('--distributed finds the cluster itself: drop --coordinator_address, --num_processes '
                      'and --process_id, or drop --distributed')
  if auto or all(v is None for v in explicit):
    return
  if None in explicit:
    raise ConfigError('a multi-process run needs all of --coordinator_address, --num_processes and '
                      '--process_id (or none of them on a Cloud TPU slice)')
  if not 1 <= num_processes <= MAX_PROCESSES:
    raise ConfigError(f'--num_processes {num_processes}: give the number of processes in the run, from 1 to '
                      f'{MAX_PROCESSES}')
  if not 0 <= process_id < num_processes:
    raise ConfigError(f'--process_id {process_id} must lie in [0, --num_processes={num_processes})')
  if ':' not in coordinator_address:
    raise ConfigError(f'--coordinator_address {coordinator_address!r} must be HOST:PORT')
  host, _, port = coordinator_address.rpartition(':')  # [::1]:1234 keeps its brackets
  if not host.strip() or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
    raise ConfigError(f'--coordinator_address {coordinator_address!r} must be HOST:PORT with a host name or '
                      'address and a port from 1 to 65535, e.g. 10.0.0.2:8476')


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
  """Starts the distributed runtime when the run spans processes; returns whether it did.

  auto (brt-train --distributed, what launch/train.sh passes): let JAX find the cluster itself (Cloud
  TPU metadata, SLURM, ...). Must run before anything touches a JAX device."""
  check_args(coordinator_address, num_processes, process_id, auto)
  if auto:
    jax.distributed.initialize()
    return True
  if num_processes is not None:
    if num_processes == 1:
      return False
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU devices only; TPUs use ICI
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True
  if on_multi_worker_tpu():
    jax.distributed.initialize()
    return True
  return False


def all_true(flag: bool) -> bool:
  """Whether `flag` holds on every process (each process passes its own)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.all(multihost_utils.process_allgather(np.array([bool(flag)], np.int32))))


def gather_json(value) -> list:
  """Every process's JSON-serialisable `value`, in process order, on every process."""
  if jax.process_count() == 1:
    return [value]
  raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32)).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded).reshape(len(lengths), -1)
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths)]


def any_true(flag: bool) -> bool:
  """Whether `flag` holds on at least one process (each process passes its own)."""
  return not all_true(not flag)
