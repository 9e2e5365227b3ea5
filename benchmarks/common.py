"""What every benchmark shares: the machine's description, min/median/max, markdown tables, results files.

Benchmarks run from the repository root (`.venv/bin/python benchmarks/NAME.py`) and write
results/NAME.json (rows), results/NAME.md (the printed table) and results/NAME.png (with the `bench` extra).
"""

from __future__ import annotations

import os
import pathlib
import platform
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # `block_recurrent` from a checkout

from block_recurrent.diagnostics import plots  # noqa: E402  pylint: disable=wrong-import-position

RESULTS = pathlib.Path('results')


def machine() -> str:
  """One line: CPU model, cores, memory, load, Python and jax versions."""
  cpu = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
  except OSError:
    pass
  try:
    memory = f'{os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30:.0f} GiB'
  except (ValueError, OSError):
    memory = '? GiB'
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return (f'{cpu}, {os.cpu_count()} cores, {memory}, load average {os.getloadavg()[0]:.2f}; Python '
          f'{platform.python_version()}, jax {jax.__version__} on {device.platform} ({device.device_kind})')


def spread(values, fmt: str = '{:.2f}') -> str:
  """'min / median / max' of values."""
  values = sorted(values)
  return ' / '.join(fmt.format(v) for v in (values[0], statistics.median(values), values[-1]))


def table(headers: list[str], rows: list[list]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def publish(name: str, text: str, rows, draw, figsize=(6, 3.8)) -> None:
  """Prints text (the markdown result) and writes results/NAME.{md,json,png}."""
  print(text)
  RESULTS.mkdir(exist_ok=True)
  (RESULTS / f'{name}.md').write_text(text + '\n')
  plots.save(str(RESULTS / name), rows, draw, figsize=figsize)
