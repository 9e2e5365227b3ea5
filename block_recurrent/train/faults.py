"""Fault injection: brt-train interrupted by signals at seeded random moments, resumed each time.

Used by tests/train/test_faults.py (5 SIGKILLs, 5 SIGTERMs) and benchmarks/soak.py (50 kills). Each launch
is a real `python -m block_recurrent.cli.train` process. A moment is "d seconds after the process logged step
k" (k and d drawn from a seeded generator over the steps still to run), so interruptions land during
steps, asynchronous checkpoint writes and evaluations alike; a few land before training starts. After
every interruption each checkpoint Orbax lists must restore completely.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import selectors
import signal
import subprocess
import sys
import time

import numpy as np

STEP_LINE = re.compile(r'^step\s+(\d+)/')


@dataclasses.dataclass
class Interruption:
  signal: str
  after_step: int  # the logged step the moment was counted from (0: from the launch)
  delay_s: float
  returncode: int
  last_logged: int  # the last step the process logged before it ended
  checkpoints: list  # complete checkpoints after it ended
  stopped_line: str = ''  # SIGTERM: the loop's "received SIGTERM: stopped after step K ..." line


def command(args: list[str]) -> list[str]:
  return [sys.executable, '-m', 'block_recurrent.cli.train', *args]


def environment(cache_dir: str | None = None) -> dict:
  """The caller's environment plus a persistent compilation cache shared by the launches."""
  env = dict(os.environ, NO_GCE_CHECK='true', PYTHONUNBUFFERED='1')
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def run_to_end(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run(command(args), env=env, capture_output=True, text=True, timeout=timeout)


def interrupt(args: list[str], env: dict, sig: int, after_step: int, delay_s: float,
              timeout: float = 600) -> tuple[int, int, list[str]]:
  """Launches brt-train, sends `sig` delay_s after it logs step `after_step` (0: after the launch), and
  waits for it to end: (return code, last logged step, output lines). A process that ends first is
  not signalled."""
  proc = subprocess.Popen(command(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1)
  lines, last, sent, deadline = [], 0, False, time.monotonic() + timeout
  fire_at = time.monotonic() + delay_s if after_step == 0 else None
  with selectors.DefaultSelector() as sel:
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
      if time.monotonic() > deadline:
        proc.kill()
        raise TimeoutError(f'brt-train did not end within {timeout}s: {lines[-5:]}')
      wait = 0.5 if fire_at is None else max(0.0, fire_at - time.monotonic())
      if sel.select(timeout=wait):
        line = proc.stdout.readline()
        if not line:  # the process closed its output: it is ending
          break
        lines.append(line.rstrip('\n'))
        match = STEP_LINE.match(line)
        if match:
          last = int(match.group(1))
          if fire_at is None and not sent and last >= after_step:
            fire_at = time.monotonic() + delay_s
      if fire_at is not None and not sent and time.monotonic() >= fire_at:
        if proc.poll() is None:
          proc.send_signal(sig)
        sent = True
    return proc.wait(timeout=max(1.0, deadline - time.monotonic())), last, lines


def saved_state(workdir: pathlib.Path, step: int) -> dict:
  """{'state': nested arrays, 'data': cursor} of a brt-train workdir's checkpoint, read raw (read-only)."""
  from block_recurrent.train import checkpoint  # pylint: disable=import-outside-toplevel
  return checkpoint.read_raw(pathlib.Path(workdir) / 'checkpoints', [step])[step]


def readable_checkpoints(directory: pathlib.Path) -> list[int]:
  """The steps of every complete checkpoint under directory, each restored raw (arrays and data cursor):
  raises if Orbax lists one it cannot read."""
  from block_recurrent.train import checkpoint  # pylint: disable=import-outside-toplevel
  if not directory.is_dir():
    return []
  restored = checkpoint.read_raw(directory)
  for step, saved in restored.items():
    assert saved['data'] and saved['state'], f'checkpoint {directory}/{step} restored empty'
  return sorted(restored)


def schedule(seed: int, kinds: list[int], num_steps: int, max_delay_s: float = 0.3,
             before_training: float = 0.1) -> list[tuple[int, int, float]]:
  """(signal, after_step, delay) per interruption: after_step spread over the run, increasing, with a
  `before_training` share of moments counted from the launch (during imports, compilation or restore)."""
  rng = np.random.default_rng(seed)
  steps = np.sort(rng.integers(1, num_steps, len(kinds)))
  out = []
  for sig, step in zip(kinds, steps):
    if rng.random() < before_training:
      out.append((sig, 0, float(rng.uniform(0.5, 6.0))))
    else:
      out.append((sig, int(step), float(rng.uniform(0.0, max_delay_s))))
  return out


def run_with_interruptions(args: list[str], workdir: pathlib.Path, plan: list[tuple[int, int, float]], env: dict,
                           echo=lambda line: None) -> tuple[list[Interruption], subprocess.CompletedProcess]:
  """Runs brt-train `args` (whose --workdir is workdir) through every interruption of `plan`, checking the
  checkpoints after each, then once more to the end; returns the interruptions and the final run."""
  done = []
  for sig, after_step, delay in plan:
    code, last, lines = interrupt(args, env, sig, after_step, delay)
    steps = readable_checkpoints(workdir / 'checkpoints')
    stopped = next((l for l in lines if l.startswith('received ')), '')
    done.append(Interruption(signal.Signals(sig).name, after_step, delay, code, last, steps, stopped))
    echo(f'{signal.Signals(sig).name} {delay:.2f}s after step {after_step}: exit {code}, last logged step {last}, '
         f'checkpoints {steps}')
  final = run_to_end(args, env)
  return done, final
