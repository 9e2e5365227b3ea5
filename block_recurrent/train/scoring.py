"""brt-eval and brt-generate's side of a trained workdir: its newest (or a given) checkpoint restored, and
a whole split scored with the state carried through every segment of every document."""

from __future__ import annotations

import jax

from block_recurrent import configs
from block_recurrent.data import tasks
from block_recurrent.train import checkpoint as ckpt_lib
from block_recurrent.train.loop import LN2, eval_program, evaluate, setup


def restore_workdir(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig,
                    train_cfg: configs.TrainConfig, mesh_cfg: configs.MeshConfig, workdir: str,
                    step: int | None = None):
  """(setup, step, train state) of a brt-train workdir's newest (or `step`) complete checkpoint."""
  s = setup(model_cfg, data_cfg, train_cfg, mesh_cfg)
  directory = ckpt_lib.path(workdir) / 'checkpoints'
  if not directory.is_dir() or not any(p.name.isdigit() for p in directory.iterdir()):
    raise configs.ConfigError(f'{workdir} has no checkpoint: train it first with brt-train --workdir={workdir}')
  checkpointer = ckpt_lib.Checkpointer(directory, keep=1000, every=1, create=False)
  restored = checkpointer.restore(s.target, step)
  checkpointer.close()
  if restored is None:
    raise configs.ConfigError(f'{directory} holds no complete checkpoint'
                              + (f' at step {step}' if step is not None else ''))
  return s, restored[0], restored[1]


def evaluate_workdir(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig,
                     train_cfg: configs.TrainConfig, mesh_cfg: configs.MeshConfig, workdir: str, *,
                     split: str = 'validation', step: int | None = None, losses_file: str | None = None,
                     echo=print) -> dict:
  """brt-eval: the newest (or `step`) checkpoint of workdir scored on a whole split of data_cfg.task;
  losses_file gets one line per token: doc_id, position, token id, loss in bits."""
  s, step, state = restore_workdir(model_cfg, data_cfg, train_cfg, mesh_cfg, workdir, step)
  docs = tasks.documents(data_cfg.task, split, data_dir=data_cfg.data_dir, spm_path=data_cfg.spm_path,
                         process_index=jax.process_index(), process_count=jax.process_count())
  if not docs:
    raise configs.ConfigError(f'task {data_cfg.task} has no documents in split {split!r}')
  echo(f'scoring {len(docs)} {split} documents of {data_cfg.task} with {workdir}/checkpoints/{step}')
  out = None
  if losses_file:
    try:
      out = open(losses_file, 'w')  # pylint: disable=consider-using-with
    except OSError as e:
      raise configs.ConfigError(f'cannot write --losses_file {losses_file}: {e.strerror}') from None
    out.write('doc_id\tposition\ttoken\tbits\n')

  def write(doc_id, first, targets, nll):
    out.writelines(f'{doc_id}\t{first + i}\t{t}\t{b:.5f}\n' for i, (t, b) in enumerate(zip(targets, nll / LN2)))

  try:
    _, ev = evaluate(s, eval_program(s), state, docs, model_cfg.segment_length,
                     per_token=write if out is not None else None)
  finally:
    if out is not None:
      out.close()
  return dict(ev, step=step, documents=len(docs))
