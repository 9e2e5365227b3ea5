"""What the brt-* commands share: configs from gin files (a workdir's config.gin: train/workdir.py), and the
checks of flags and data every command makes before anything is built or written."""

from __future__ import annotations


def configs_from_gin(gin_files, gin_params):
  """(ModelConfig, DataConfig, TrainConfig, MeshConfig) of --gin_file and --gin_param."""
  from block_recurrent import ginconf  # pylint: disable=import-outside-toplevel
  ginconf.parse(gin_files, gin_params)
  return ginconf.bound_configs()


def check_data(data_cfg) -> None:
  """The task and its vocabulary, before anything is built or written (no document is read here)."""
  from block_recurrent.data import tasks, vocab as vocab_lib  # pylint: disable=import-outside-toplevel
  if data_cfg.task.endswith('_tokens'):
    vocab_lib.check_model(data_cfg.spm_path or tasks.DEFAULT_SPM)
  tasks.task(data_cfg.task, data_cfg.data_dir, data_cfg.spm_path)  # an unknown corpus fails here


def check_given(flag: str, value: str | None, what: str) -> None:
  """An empty string (often an unset shell variable) is never taken to mean the current folder or nothing."""
  from block_recurrent import configs  # pylint: disable=import-outside-toplevel
  if value == '':
    raise configs.ConfigError(f'{flag} is empty: give {what}')


def check_step(step: int | None) -> None:
  from block_recurrent import configs  # pylint: disable=import-outside-toplevel
  if step is not None and step < 0:
    raise configs.ConfigError(f'--step {step}: give the step of a saved checkpoint, or leave it out for the newest')
