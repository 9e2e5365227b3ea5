"""Parameter counts: brt-info reproduces the paper's numbers; the closed form equals the real model."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent import flops
from block_recurrent.cli import info
import helpers

# Non-embedding parameter counts of brt.md (exact where the reference gives them, else to 0.1M).
PAPER = {
    'rec_fixed_skip': 160_462_968, 'slide12': 151.0e6, 'slide13': 163.6e6, 'xl512': 151.0e6,
    'xl1024': 151.0e6, 'xl2048': 151.0e6, 'rec_fixed_dual': 168.9e6, 'rec_fixed_single': 170.9e6,
    'rec_lstm_skip': 164.7e6, 'rec_lstm_dual': 181.4e6, 'rec_lstm_single': 179.3e6,
    'feedback_fixed_skip': 183.5e6,
}


def brt_info(capsys, *args):
  assert info.main(list(args)) == 0
  out = capsys.readouterr().out
  return {k: int(v) for k, v in re.findall(r'^(total parameters|non-embedding parameters): (\d+)$', out, re.M)}


@pytest.mark.parametrize('name', sorted(PAPER))
def test_brt_info_reproduces_paper_counts(capsys, name):
  counts = brt_info(capsys, f'--gin_file=gin/experiments/paper/{name}.gin')
  expected = PAPER[name]
  if isinstance(expected, int):
    assert counts['non-embedding parameters'] == expected
  else:
    assert round(counts['non-embedding parameters'] / 1e5) == round(expected / 1e5)
  assert counts['total parameters'] == counts['non-embedding parameters'] + 32128 * 1024


def test_brt_info_reports_bad_config_in_one_line(capsys):
  assert info.main(['--gin_file=gin/experiments/tiny/slide.gin',
                    "--gin_param=configs.ModelConfig.wiring='loop'"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('brt-info: error: unknown wiring') and '\n' not in err


@pytest.mark.parametrize('name', list(helpers.VARIANTS))
def test_closed_form_equals_real_parameter_count(name):
  cfg = helpers.config(name)
  assert flops.param_count(cfg) == brt.count_params(brt.abstract_model(cfg))


@pytest.mark.parametrize('name', ['slide', 'rec_lstm_dual'])
def test_forward_flops_match_xla_cost_analysis(name):
  """The analytic count is the matmul work; XLA counts everything. They agree to within 15%.

  The blocks are unrolled because XLA's cost analysis counts a while loop's body once.
  """
  cfg = helpers.config(name, d_model=64, mlp_dim=256, num_heads=4, vocab_size=64, window=16,
                       segment_length=64, num_states=16, unroll=True)
  model = brt.build_model(config=cfg)
  params, _, graphdef = brt.functional(model)
  tokens = helpers.tokens(0, 2, 64, 64)
  fwd = jax.jit(lambda p: nnx.merge(graphdef, p)(tokens, model.init_carry(2), np.ones(2, bool))[0])
  cost = fwd.lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = flops.forward_flops_per_token(cfg) * tokens.size
  assert 0.85 < analytic / cost['flops'] < 1.15, (analytic, cost['flops'])
