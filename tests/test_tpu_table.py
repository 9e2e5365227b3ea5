"""benchmarks/tpu_table.py's largest-batch search, without a TPU compile: the shipped row read back from
docs/tpu.md (its peak split by memory_plan, no compile) and the walk to the boundary over a peak that
XLA's rematerialisation makes non-monotone."""

import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))

import tpu_table  # pylint: disable=wrong-import-position


def test_shipped_row_is_read_back_from_the_docs_table():
  first = tpu_table.shipped_from(ROOT / 'docs' / 'tpu.md', 'slide13', 'v5p-8')
  assert first['rows'] == 32 and first['hbm_gib'] == 95 and first['mesh'] == dict(data=4, fsdp=1, model=1)
  # Parameters and Adafactor state of a ~150M model in float32, replicated: about 1.3 GiB, well under the peak.
  assert 0.8 < first['arguments_gib'] < 2.0
  assert first['arguments_gib'] + first['temporaries_gib'] == pytest.approx(first['peak_gib'])
  assert tpu_table.shipped_from(ROOT / 'docs' / 'tpu.md', 'slide13', 'v6e-8') is None


def _synthetic_slice(monkeypatch, peak):
  """Compiles replaced by `peak(rows)` GiB against 17 GiB of HBM on a 4-device mesh; returns a shipped row
  of 8 rows (2 GiB fixed, 2 GiB that grow with the rows)."""
  def compile_in_process(experiment, topology, step='train', batch=0):
    return dict(experiment=experiment, topology=topology, step=step, ok=True, rows=batch, peak_gib=peak(batch),
                hbm_gib=17.0, fits=peak(batch) <= 17.0)

  monkeypatch.setattr(tpu_table, 'compile_in_process', compile_in_process)
  return dict(rows=8, mesh=dict(data=4, fsdp=1, model=1), arguments_gib=2.0, outputs_gib=0.0, temporaries_gib=2.0,
              hbm_gib=17.0, ok=True, fits=True)


@pytest.mark.parametrize('dip', [False, True])
def test_largest_batch_walks_to_a_proved_boundary(monkeypatch, dip):
  """Peak grows 1 GiB per 4 rows over 2 GiB fixed; with `dip`, recomputation lowers it from 64 rows on
  (as XLA does near the limit), so the affine prediction (60 rows) is a floor and the walk goes on."""
  def peak(rows):
    return 2.0 + rows / 4 - (6.0 if dip and rows >= 64 else 0.0)
  first = _synthetic_slice(monkeypatch, peak)
  recorded = []
  best = tpu_table.largest_batch('x', 'v5p-8', first, recorded.append)
  assert best == (84 if dip else 60)
  assert peak(best) <= 17.0 < peak(best + 4)
  assert recorded[-1]['largest_batch'] == best
  assert {r['rows'] for r in recorded if r.get('largest_batch_probe')} >= {best, best + 4}


def test_largest_batch_searches_down_from_a_prediction_that_does_not_fit(monkeypatch):
  peak = lambda rows: 2.0 + rows / 2  # twice the per-row memory the shipped row suggested
  first = _synthetic_slice(monkeypatch, peak)
  assert tpu_table.largest_batch('x', 'v5p-8', first, lambda r: None) == 28


def test_a_shipped_batch_that_is_the_largest_is_tabulated(monkeypatch):
  first = tpu_table.shipped_from(ROOT / 'docs' / 'tpu.md', 'slide13', 'v5p-8')
  monkeypatch.setattr(tpu_table, 'compile_in_process', lambda *a, batch=0, **k: dict(ok=True, rows=batch, fits=False))
  recorded = []
  assert tpu_table.largest_batch('slide13', 'v5p-8', first, recorded.append) == 32
  assert tpu_table._row(recorded[-1]).startswith('| slide13 (largest batch) | v5p-8 | train | 32 | 20.24 of 95 GiB | yes |')
