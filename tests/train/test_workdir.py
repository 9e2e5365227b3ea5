"""block_recurrent/train/workdir.py without training: its config.gin read back, the one "has a checkpoint"
check, and the I/O failures it reports (a trained workdir: tests/train/test_workdir_reliability.py)."""

import pytest

from block_recurrent import configs, errors
from block_recurrent.train import workdir as workdir_lib


def test_has_checkpoint_needs_a_step_folder_in_checkpoints(tmp_path):
  assert not workdir_lib.has_checkpoint(tmp_path / 'nowhere')
  assert not workdir_lib.has_checkpoint(tmp_path)
  (tmp_path / 'checkpoints').mkdir()
  assert not workdir_lib.has_checkpoint(tmp_path)
  (tmp_path / 'checkpoints' / '3.orbax-checkpoint-tmp-1').mkdir()
  assert not workdir_lib.has_checkpoint(tmp_path)  # an interrupted save is not a checkpoint
  (tmp_path / 'checkpoints' / '3').mkdir()
  assert workdir_lib.has_checkpoint(tmp_path)
  assert str(workdir_lib.checkpoints(tmp_path)) == str(tmp_path.resolve() / 'checkpoints')


def test_check_load_dir_names_the_flag_and_what_to_give(tmp_path):
  with pytest.raises(configs.ConfigError, match=f'^--load_dir {tmp_path} has no checkpoints folder with a '
                                                'checkpoint in it: point it at a brt-train workdir$'):
    workdir_lib.check_load_dir(str(tmp_path))
  (tmp_path / 'checkpoints' / '1').mkdir(parents=True)
  workdir_lib.check_load_dir(str(tmp_path))


def test_read_configs_reads_config_gin_with_extra_bindings(tmp_path):
  with pytest.raises(configs.ConfigError, match='config.gin not found: --workdir must be a folder brt-train wrote'):
    workdir_lib.read_configs(str(tmp_path))
  (tmp_path / 'config.gin').write_text('from __gin__ import dynamic_registration\n'
                                       'from block_recurrent import configs\n'
                                       'configs.ModelConfig.d_model = 48\n'
                                       "configs.DataConfig.task = 'pg_mini_bytes'\n")
  model_cfg, data_cfg, train_cfg, mesh_cfg = workdir_lib.read_configs(
      str(tmp_path), ['configs.DataConfig.eval_batch_size = 4'])
  assert model_cfg.d_model == 48 and data_cfg.task == 'pg_mini_bytes' and data_cfg.eval_batch_size == 4
  assert train_cfg == configs.TrainConfig() and mesh_cfg == configs.MeshConfig()
  assert workdir_lib.saved_bindings(tmp_path)['ModelConfig.d_model'] == 48


def test_a_workdir_that_cannot_be_written_is_an_io_failure(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  with pytest.raises(errors.IOFailure, match=f'^cannot write to workdir {blocker}/run: '):
    workdir_lib.create(blocker / 'run')
  with pytest.raises(errors.IOFailure, match=f'^cannot write to workdir {blocker}: '):
    workdir_lib.record_config(blocker, 'configs.ModelConfig.d_model = 8\n', 0)


def test_record_config_keeps_a_replaced_config_in_the_history(tmp_path):
  assert workdir_lib.record_config(tmp_path, 'a = 1\n', 0) is None
  assert workdir_lib.record_config(tmp_path, 'a = 1\n', 2) is None  # the same config: nothing kept
  kept = workdir_lib.record_config(tmp_path, 'a = 2\n', 4)
  assert kept.endswith('.step4.gin') and open(kept).read() == 'a = 1\n'
  assert (tmp_path / 'config.gin').read_text() == 'a = 2\n'
