"""The flat training loop, read top to bottom: setup, restore, then step / log / evaluate / checkpoint.

Resume order: the newest complete checkpoint in workdir/checkpoints restores the whole train state and
the data cursor; otherwise --load_dir's parameters (fine-tuning) or a fresh initialisation.
"""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import configs, flops, sharding
from block_recurrent.data import segments, tasks
from block_recurrent.model.lm import LanguageModel
from block_recurrent.train import checkpoint as ckpt_lib, optim, step as step_lib

LN2 = math.log(2.0)


def matmul_peak_flops() -> float:
  """FLOP/s of a large float32 matmul on this device: the peak MFU is stated against."""
  a = jnp.ones((2048, 2048), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(5):
    f(a).block_until_ready()
  return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t0)


def _batch_arrays(batch: segments.Batch) -> dict:
  return {'inputs': batch.inputs, 'targets': batch.targets, 'mask': batch.mask,
          'start': batch.start_of_sequence, 'num_bytes': batch.num_bytes.astype(np.int32)}


def _summary(sums: dict) -> dict:
  tokens, nats = max(sums['tokens'], 1.0), sums['nll_sum']
  return {'loss': nats / tokens, 'bits_per_token': nats / tokens / LN2,
          'bits_per_byte': nats / LN2 / max(sums['bytes'], 1.0), 'perplexity': math.exp(min(nats / tokens, 50)),
          'accuracy': sums['correct'] / tokens}


def train(model_cfg: configs.ModelConfig, data_cfg: configs.DataConfig, train_cfg: configs.TrainConfig,
          mesh_cfg: configs.MeshConfig, workdir: str, *, load_dir: str | None = None,
          reset_optimizer: bool = False, config_text: str = '', echo=print) -> dict:
  # --- setup --------------------------------------------------------------------------------------
  workdir = pathlib.Path(workdir).resolve()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'config.gin').write_text(config_text)
  except OSError as e:
    raise configs.ConfigError(f'cannot write to workdir {workdir}: {e.strerror}') from None
  mesh = sharding.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.model)
  pid, pcount = jax.process_index(), jax.process_count()
  lanes = data_cfg.batch_size // pcount
  eval_batch = data_cfg.eval_batch_size or data_cfg.batch_size
  train_docs = tasks.documents(data_cfg.task, 'train', data_dir=data_cfg.data_dir, spm_path=data_cfg.spm_path,
                               process_index=pid, process_count=pcount)
  eval_docs = tasks.documents(data_cfg.task, 'validation', data_dir=data_cfg.data_dir,
                              spm_path=data_cfg.spm_path, process_index=pid, process_count=pcount)
  batcher = segments.DocumentBatcher(train_docs, batch_size=lanes, segment_length=model_cfg.segment_length,
                                     shuffle_seed=data_cfg.shuffle_seed, num_epochs=data_cfg.num_epochs)
  tx, schedule = optim.optimizer(train_cfg), optim.schedule(train_cfg)

  abstract_model = nnx.eval_shape(lambda: LanguageModel(model_cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sh = sharding.param_shardings(mesh, abstract_params)

  def init(seed=train_cfg.seed):
    model = LanguageModel(model_cfg, nnx.Rngs(params=seed))
    params = nnx.state(model)
    return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                               rng=jax.random.key_data(jax.random.key(seed + 1)),
                               carry=model.init_carry(data_cfg.batch_size), eval_carry=model.init_carry(eval_batch))

  abstract_state = jax.eval_shape(init)
  carry_sh = sharding.carry_shardings(mesh, abstract_state.carry)
  eval_carry_sh = sharding.carry_shardings(mesh, abstract_state.eval_carry)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state_sh = step_lib.TrainState(step=replicated, params=param_sh,
                                 opt_state=jax.tree.map(lambda _: replicated, abstract_state.opt_state),
                                 rng=replicated, carry=carry_sh, eval_carry=eval_carry_sh)

  def batch_shardings(rows):
    return {k: sharding.batch_sharding(mesh, (rows,) + ((model_cfg.segment_length,)
                                       if k in ('inputs', 'targets', 'mask') else ()))
            for k in ('inputs', 'targets', 'mask', 'start', 'num_bytes')}

  batch_sh, eval_batch_sh = batch_shardings(data_cfg.batch_size), batch_shardings(eval_batch)

  # --- restore --------------------------------------------------------------------------------------
  checkpointer = ckpt_lib.Checkpointer(workdir / 'checkpoints', keep=train_cfg.keep_checkpoints,
                                       every=train_cfg.checkpoint_every)
  target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_state,
                        state_sh)
  restored = checkpointer.restore(target)
  if restored is not None:
    start_step, state, cursor = restored
    batcher.restore(cursor)
    echo(f'resumed from {checkpointer.directory}/{start_step}')
  else:
    state = jax.jit(init, out_shardings=state_sh)()
    if load_dir:
      loaded = ckpt_lib.Checkpointer(pathlib.Path(load_dir) / 'checkpoints', keep=1, every=1).restore(target)
      if loaded is None:
        raise configs.ConfigError(f'--load_dir {load_dir} holds no complete checkpoint')
      params = loaded[1].params
      state = state._replace(params=params, opt_state=state.opt_state if reset_optimizer else
                             loaded[1].opt_state)
      echo(f'started from the parameters of {load_dir}' + (' (optimiser reset)' if reset_optimizer else ''))

  train_fn = jax.jit(lambda s, b: step_lib.train_step(graphdef, tx, schedule, s, b,
                                                       dropout=model_cfg.dropout_rate > 0),
                     in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
  eval_fn = jax.jit(lambda s, b: step_lib.eval_step(graphdef, s, b), in_shardings=(state_sh, eval_batch_sh),
                    out_shardings=(state_sh, None), donate_argnums=0)

  def put(arrays: dict, shardings: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in arrays.items()}

  def evaluate(state):
    eval_batcher = segments.DocumentBatcher(eval_docs, batch_size=eval_batch // pcount,
                                            segment_length=model_cfg.segment_length, num_epochs=1)
    state = state._replace(eval_carry=jax.tree.map(jnp.zeros_like, state.eval_carry))
    sums = {}
    for i, batch in enumerate(eval_batcher):
      if train_cfg.eval_segments and i >= train_cfg.eval_segments:
        break
      arrays = _batch_arrays(batch)
      arrays['start'] = arrays['start'] | (i == 0)  # a fresh eval carry: every lane starts clean
      state, stats = eval_fn(state, put(arrays, eval_batch_sh))
      for k, v in stats.items():
        sums[k] = sums.get(k, 0.0) + float(v)
    return state, _summary(sums)

  # --- loop ---------------------------------------------------------------------------------------
  peak = matmul_peak_flops()
  flops_per_token = flops.train_flops_per_token(model_cfg)
  log = (workdir / 'metrics.jsonl').open('a')
  step_now = int(state.step)
  echo(f'training {data_cfg.task} for {train_cfg.num_steps} steps from step {step_now}: workdir {workdir}')
  sums, t_log, t0, last = {}, time.perf_counter(), time.perf_counter(), {}
  for step_now in range(step_now, train_cfg.num_steps):
    batch = next(batcher, None)
    if batch is None:
      echo('the training data ran out (num_epochs reached)')
      break
    state, metrics = train_fn(state, put(_batch_arrays(batch), batch_sh))
    if not sums and step_now == int(restored[0] if restored else 0):
      jax.block_until_ready(metrics)
      echo(f'first step done {time.perf_counter() - t0:.1f}s after the loop started (compilation included)')
    for k, v in metrics.items():
      sums[k] = sums.get(k, 0.0) + float(v) if k in ('nll_sum', 'tokens', 'correct', 'bytes') else float(v)
    done = step_now + 1
    if done % max(train_cfg.log_every, 1) == 0 or done == train_cfg.num_steps:
      elapsed = time.perf_counter() - t_log
      rate = sums['tokens'] / max(elapsed, 1e-9)
      last = dict(_summary(sums), step=done, learning_rate=sums['learning_rate'], grad_norm=sums['grad_norm'],
                  tokens_per_s=rate, mfu=rate * flops_per_token / peak)
      eta = (time.perf_counter() - t0) / max(done - int(restored[0] if restored else 0), 1) * (
          train_cfg.num_steps - done)
      echo(f'step {done:6d}/{train_cfg.num_steps}  loss {last["loss"]:.3f}  bits/byte {last["bits_per_byte"]:.3f}  '
           f'{rate:,.0f} tokens/s  MFU {100 * last["mfu"]:.1f}%  ETA {eta:.0f}s')
      log.write(json.dumps({'split': 'train', **last}) + '\n')
      log.flush()
      sums, t_log = {}, time.perf_counter()
    if train_cfg.eval_every and done % train_cfg.eval_every == 0 and done < train_cfg.num_steps:
      state, ev = evaluate(state)
      echo(f'eval at step {done}: bits/byte {ev["bits_per_byte"]:.3f}  bits/token {ev["bits_per_token"]:.3f}')
      log.write(json.dumps({'split': 'validation', 'step': done, **ev}) + '\n')
    if done % max(train_cfg.checkpoint_every, 1) == 0 or done == train_cfg.num_steps:
      checkpointer.save(done, state, batcher.state(), force=done == train_cfg.num_steps)
  checkpointer.wait()
  state, ev = evaluate(state)
  log.write(json.dumps({'split': 'validation', 'step': int(state.step), **ev}) + '\n')
  log.close()
  checkpointer.close()
  echo(f'validation bits/byte {ev["bits_per_byte"]:.4f}  bits/token {ev["bits_per_token"]:.4f}')
  echo(f'outputs: {workdir}/metrics.jsonl, {workdir}/config.gin, {checkpointer.directory}')
  return {'train': last, 'validation': ev, 'state': state}
