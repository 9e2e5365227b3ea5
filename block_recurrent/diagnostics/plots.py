"""Where the diagnostics put their results: OUT.json always, OUT.png when matplotlib (the `bench` extra)
is installed."""

from __future__ import annotations

import json
import pathlib
from typing import Callable


def save(out: str, rows: list, draw: Callable, figsize=(5, 3.5)) -> None:
  """Writes rows to OUT.json and, with matplotlib, calls draw(ax) and saves OUT.png; says what it wrote."""
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix('.json').write_text(json.dumps(rows, indent=1))
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print(f'wrote {out.with_suffix(".json")}; no plot: pip install -e ".[bench]" for matplotlib')
    return
  fig, ax = plt.subplots(figsize=figsize)
  draw(ax)
  fig.tight_layout()
  fig.savefig(out.with_suffix('.png'), dpi=120)
  plt.close(fig)
  print(f'wrote {out.with_suffix(".png")} and {out.with_suffix(".json")}')
