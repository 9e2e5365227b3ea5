"""Ahead-of-time compilation (train/aot.py) with XLA's real TPU compiler (libtpu, from the `tpu` extra the
README's test set-up installs): FSDP splits each device's arguments over the slice."""

from block_recurrent.train import aot

TINY = ['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/task/pg_mini_bytes.gin']


def test_fsdp_splits_each_devices_arguments_over_the_slice():
  from block_recurrent import configs, ginconf
  reports = {}
  for mesh in ('gin/mesh/data_parallel.gin', 'gin/mesh/fsdp.gin'):
    # 128-wide arrays: a TPU pads smaller dimensions to its (8, 128) tiles, which would swamp the tiny model
    ginconf.parse([*(a.split('=', 1)[1] for a in TINY), mesh],
                  ['configs.DataConfig.batch_size = 8', 'configs.ModelConfig.d_model = 256',
                   'configs.ModelConfig.head_dim = 128', 'configs.ModelConfig.mlp_dim = 512'])
    reports[mesh] = aot.compile_step(ginconf.bound_model_config(), ginconf.bound_data_config(),
                                     ginconf.bound(configs.TrainConfig), ginconf.bound(configs.MeshConfig), 'v5e-8')
  whole = reports['gin/mesh/data_parallel.gin'].arguments  # parameters and optimiser state on every device
  per_device = reports['gin/mesh/fsdp.gin'].arguments
  assert reports['gin/mesh/fsdp.gin'].mesh == {'data': 1, 'fsdp': 8, 'model': 1}
  assert per_device * 8 <= 1.5 * whole and per_device < whole / 4, (per_device, whole)
