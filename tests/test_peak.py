"""The MFU denominator: stated peaks for accelerators, a best-of measurement on CPU kept per workdir (a
resumed run reports against the same number), and TrainConfig.peak_flops overriding both."""

import json

from block_recurrent import configs, peak
from block_recurrent.train import checkpoint, loop


def test_accelerators_use_their_stated_bf16_peak():
  assert peak.stated('TPU v4') == 275e12 and peak.stated('TPU v5 lite') == 197e12
  assert peak.stated('NVIDIA H100 80GB HBM3') == 989e12 and peak.stated('cpu') is None
  assert peak.peak_flops('TPU v5p', 'tpu') == (459e12, 'the stated bf16 peak of TPU v5p')
  assert peak.peak_flops('TPU v5p', 'tpu', override=1e12) == (1e12, 'TrainConfig.peak_flops')


def test_a_workdir_keeps_its_cpu_peak_across_resumes(tmp_path):
  workdir = checkpoint.path(tmp_path)
  lines = []
  first = loop._mfu_peak(workdir, configs.TrainConfig(), lines.append)  # pylint: disable=protected-access
  saved = json.loads((tmp_path / 'peak.json').read_text())
  assert saved['flops'] == first > 1e9 and 'best of 7' in saved['how']
  (tmp_path / 'peak.json').write_text(json.dumps(dict(saved, flops=123e9)))  # what a resume finds
  assert loop._mfu_peak(workdir, configs.TrainConfig(), lines.append) == 123e9  # pylint: disable=protected-access
  assert 'kept in' in lines[-1] and '123 GFLOP/s' in lines[-1]
  fixed = configs.TrainConfig(peak_flops=5e11)
  assert loop._mfu_peak(workdir, fixed, lines.append) == 5e11  # pylint: disable=protected-access
