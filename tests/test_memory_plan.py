"""brt-info --devices: per-device bytes of parameters, optimiser state and carry follow the sharding rules."""

import jax
import numpy as np
from flax import nnx

from block_recurrent import configs
from block_recurrent.train import memory_plan
from block_recurrent.cli.info import main as brt_info
import helpers


def test_plan_divides_what_the_rules_shard():
  cfg = helpers.config('rec_fixed_skip', num_heads=4, head_dim=8, mlp_dim=64)
  train = configs.TrainConfig(optimizer='adamw')
  dp = memory_plan.plan(cfg, train, 8, configs.MeshConfig(data=-1), 8)
  fsdp = memory_plan.plan(cfg, train, 8, configs.MeshConfig(data=1, fsdp=-1), 8)
  both = memory_plan.plan(cfg, train, 8, configs.MeshConfig(data=1, fsdp=2, model=4), 8)
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(helpers.brt.abstract_model(cfg), nnx.Param)))
  assert dp.params == dp.params_total == 4 * n_params  # replicated float32
  assert dp.opt_state == dp.opt_state_total and dp.opt_state >= 2 * dp.params  # Adam's two moments
  assert fsdp.params < dp.params / 4 and fsdp.opt_state < dp.opt_state / 4  # d=32 splits 8 ways
  assert both.params < dp.params / 4
  assert dp.carry == fsdp.carry  # 8 rows over 8 devices either way
  assert both.carry < fsdp.carry * 2  # rows over fsdp=2 only, heads over model=4


def test_brt_info_prints_the_plan(capsys):
  assert brt_info(['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/mesh/fsdp.gin',
                   '--devices=16', '--batch_size=16']) == 0
  out = capsys.readouterr().out
  assert 'mesh data=1 x fsdp=16 x model=1 (16 devices), batch 16: per device' in out
  assert 'parameters' in out and 'optimiser state' in out and 'carry' in out
  assert brt_info(['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--devices=6',
                   '--gin_param=configs.MeshConfig.model = 4']) == 2
  assert 'does not use the 6 devices' in capsys.readouterr().err
