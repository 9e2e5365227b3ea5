"""benchmarks/recurrence_payoff.py through its entry point, without training: the grid's --list, a refused
unknown point, and --report's table from finished points (each Rec point beside the Slide of its setting)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'recurrence_payoff.py'


def _run(*args):
  return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, NO_GCE_CHECK='true', JAX_PLATFORMS='cpu'), check=False)


def _finished(root: pathlib.Path, name: str, model: str, bits: list[float], **setting) -> None:
  """A point's result.json as run_point writes it; `bits`: bits per byte of two position buckets."""
  point = dict(name=name, model=model, corpus='pg_mini', window=64, states=64, optimizer='adamw', steps=1500,
               seed=0, gate_bias=None)
  point.update(setting)
  buckets = [dict(first=0, last=63, bits_per_byte=bits[0]), dict(first=64, last=255, bits_per_byte=bits[1])]
  result = dict(point, label=model, segment=256, bits_per_byte=sum(bits) / 2, tokens=256, by_position=buckets,
                gap_segment=0.01, gap_block=0.02, diagnostics={'gate_open/layer1': 0.4},
                train_seconds=1.0, wall_seconds=2.0)
  (root / name).mkdir(parents=True)
  (root / name / 'result.json').write_text(json.dumps(result))


def test_list_report_and_unknown_points(tmp_path):
  root, out = tmp_path / 'payoff', tmp_path / 'out' / 'payoff'
  _finished(root, 'base_rec', 'rec', [3.0, 2.0])
  _finished(root, 'base_slide', 'slide', [3.5, 2.5])
  _finished(root, 'states16_rec', 'rec', [3.25, 2.25], states=16)  # a state-side change: base_slide is its twin
  _finished(root, 'steps4x_rec', 'rec', [2.0, 1.0], steps=6000)  # its Slide is not done: no difference yet

  listed = _run('--list', f'--workdir={root}')
  assert listed.returncode == 0, listed.stderr
  status = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()}
  assert status['base_rec'] == 'done' and status['steps4x_slide'] == '-' and status['code_rec'] == '-'

  bad = _run('--only', 'base_rec', 'no_such_point', f'--workdir={root}')
  assert bad.returncode == 2 and "unknown points ['no_such_point']" in bad.stderr

  made = _run('--report', f'--workdir={root}', f'--out={out}')
  assert made.returncode == 0, made.stderr
  rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[1:-1]]
          for line in out.with_suffix('.md').read_text().splitlines() if line.startswith('| ')}
  assert rows['base_rec'][10] == '-0.5000'  # bits/byte 2.5 against Slide's 3.0
  assert rows['states16_rec'][10] == '-0.2500'
  assert rows['steps4x_rec'][10] == ''
  assert rows['base_rec'][11:14] == ['+0.0100', '+0.0200', '0.400']
  assert rows['0-63'][1:] == ['-0.5000']  # the position table: each Rec point with a Slide twin of its own
  assert rows['64-255'][1:] == ['-0.5000']
