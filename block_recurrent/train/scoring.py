"""brt-eval and brt-generate's side of a trained workdir: its newest (or a given) checkpoint restored, and
a whole split scored with the state carried through every segment of every document."""

from __future__ import annotations

import dataclasses

import jax

from block_recurrent import configs, errors
from block_recurrent.data import tasks
from block_recurrent.train import positions, workdir as workdir_lib
from block_recurrent.train.loop import evaluate
from block_recurrent.train.loop_policy import LN2
from block_recurrent.train.programs import eval_program, setup


def restore_workdir(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig,
                    train_cfg: configs.TrainConfig, mesh_cfg: configs.MeshConfig, workdir: str,
                    step: int | None = None):
  """(setup, step, train state) of a brt-train workdir's newest (or `step`) sound checkpoint.

  The checkpoint is read with the batch sizes it was saved with (its carries' shapes; they are in the
  workdir's config.gin), and the returned setup and state have data_cfg's evaluation batch, with a fresh
  evaluation carry: `--gin_param=configs.DataConfig.eval_batch_size=N` works on any run."""
  if not workdir_lib.has_checkpoint(workdir):
    raise configs.ConfigError(f'{workdir} has no checkpoint: train it first with brt-train --workdir={workdir}')
  saved = workdir_lib.saved_bindings(workdir)
  saved_batch = saved.get('DataConfig.batch_size', workdir_lib.default('DataConfig.batch_size'))
  saved_cfg = dataclasses.replace(data_cfg, batch_size=saved_batch,
                                  eval_batch_size=saved.get('DataConfig.eval_batch_size'))
  s_saved = setup(model_cfg, saved_cfg, train_cfg, mesh_cfg)
  s = setup(model_cfg, dataclasses.replace(data_cfg, batch_size=saved_batch), train_cfg, mesh_cfg)
  restored = workdir_lib.read_checkpoint(workdir, s_saved.target, (model_cfg, data_cfg), step)
  if restored is None:
    raise configs.ConfigError(f'{workdir_lib.checkpoints(workdir)} holds no complete checkpoint'
                              + (f' at step {step}' if step is not None else ''))
  state = restored[1]
  if s.eval_batch != s_saved.eval_batch:  # the saved evaluation carry is never used: a fresh one of the new size
    state = state._replace(eval_carry=jax.jit(lambda: s.init().eval_carry, out_shardings=s.state_sh.eval_carry)())
  return s, restored[0], state


LOSSES_HEADER = 'doc_id\tposition\ttoken\tbits\n'


def _check_losses_file(losses_file: str) -> None:
  """Overwrite only a losses file brt-eval wrote before: never a run's config.gin or anything else."""
  import os  # pylint: disable=import-outside-toplevel
  if os.path.isdir(losses_file):
    raise configs.ConfigError(f'--losses_file {losses_file} is a folder: give a file name such as {losses_file}/losses.tsv')
  if os.path.exists(losses_file):
    try:
      with open(losses_file, encoding='utf-8', errors='replace') as f:
        first = f.readline()
    except OSError as e:
      raise errors.IOFailure(f'cannot read --losses_file {losses_file}: {e.strerror}') from None
    if first != LOSSES_HEADER:
      raise configs.ConfigError(f'--losses_file {losses_file} already exists and is not a losses file brt-eval '
                                'wrote: give a new path (it was left as it is)')


def evaluate_workdir(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig,
                     train_cfg: configs.TrainConfig, mesh_cfg: configs.MeshConfig, workdir: str, *,
                     split: str = 'validation', step: int | None = None, losses_file: str | None = None,
                     by_position: bool = False, ablate_state: str = 'none', max_segments: int = 0,
                     echo=print) -> dict:
  """brt-eval: the newest (or `step`) checkpoint of workdir scored on a whole split of data_cfg.task;
  losses_file gets one line per token: doc_id, position, token id, loss in bits. by_position: the summary
  has 'by_position', its buckets (train/positions.py). ablate_state (lm.ABLATIONS): the split is scored a
  second time with the state ablated, under 'ablated' (with its own 'by_position'). max_segments: score
  only the split's first segments per lane (brt-compare's validation), 0 for all."""
  if losses_file:
    _check_losses_file(losses_file)  # before anything is restored or read
  if ablate_state != 'none':
    _check_ablation(model_cfg, ablate_state)
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
      raise errors.IOFailure(f'cannot write --losses_file {losses_file}: {e.strerror}') from None
    out.write(LOSSES_HEADER)

  def write(doc_id, first, targets, nll):
    out.writelines(f'{doc_id}\t{first + i}\t{t}\t{b:.5f}\n' for i, (t, b) in enumerate(zip(targets, nll / LN2)))

  def score(state, ablation: str, callbacks: list):
    buckets = positions.ByPosition(docs) if by_position else None
    callbacks = [c for c in callbacks + [buckets] if c is not None]
    per_token = (lambda *a: [c(*a) for c in callbacks]) if callbacks else None
    state, ev = evaluate(s, eval_program(s, ablation), state, docs, model_cfg.segment_length, max_segments,
                         per_token=per_token)
    return state, dict(ev, **({'by_position': buckets.rows()} if buckets else {}))

  try:
    state, result = score(state, 'none', [write if out is not None else None])
  finally:
    if out is not None:
      out.close()
  result = dict(result, step=step, documents=len(docs))
  if ablate_state != 'none':
    echo(f'scoring them again with --ablate_state={ablate_state}')
    _, result['ablated'] = score(state, ablate_state, [])
    result['ablated']['mode'] = ablate_state
  return result


def _check_ablation(model_cfg: configs.ModelConfig, mode: str) -> None:
  from block_recurrent.model import lm  # pylint: disable=import-outside-toplevel
  if mode not in lm.ABLATIONS[1:]:
    raise configs.ConfigError(f'--ablate_state {mode!r}: use {" or ".join(lm.ABLATIONS[1:])}')
  if model_cfg.sequence_layer != 'attention':
    raise configs.ConfigError(f'--ablate_state is for Block-Recurrent, sliding-window and Transformer-XL models; '
                              f'this run is a {model_cfg.sequence_layer} model')
