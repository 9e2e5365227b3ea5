"""Training: sharded step == one device, the eval carry never leaks into training, metrics, brt-eval and
brt-generate on a trained run, and bad input fails cleanly without touching what is saved. Resumed ==
uninterrupted in a fresh process, bitwise, is tests/train/test_faults.py (after kills and preemptions)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import block_recurrent as brt
from block_recurrent import configs, sharding
from block_recurrent.cli.eval import main as brt_eval
from block_recurrent.cli.generate import main as brt_generate
from block_recurrent.cli.train import main as brt_train
from block_recurrent.train import checkpoint, optim, step as step_lib, summaries
import helpers

TINY = ['gin/experiments/tiny/rec_fixed_skip.gin', 'gin/task/pg_mini_bytes.gin']
PARAMS = ['configs.TrainConfig.num_steps = 4', 'configs.TrainConfig.checkpoint_every = 2',
          'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_segments = 2',
          'configs.TrainConfig.warmup_steps = 2', 'configs.DataConfig.batch_size = 2', *helpers.MESH,
          'configs.TrainConfig.eval_every = 2']


def _args(workdir, steps=4):
  return ([f'--gin_file={f}' for f in TINY] + [f'--gin_param={p}' for p in PARAMS]
          + [f'--gin_param=configs.TrainConfig.num_steps = {steps}', f'--workdir={workdir}'])


def _checkpoint_state(workdir, step):
  """The raw saved train state (nested dicts of arrays), read without the training code's target."""
  return checkpoint.read_raw(workdir / 'checkpoints', [step])[step]['state']


@pytest.fixture(scope='module')
def whole(tmp_path_factory):
  """One uninterrupted 4-step tiny run (an evaluation, then checkpoints at 2; 4), shared by the tests below."""
  workdir = tmp_path_factory.mktemp('whole')
  assert brt_train(_args(workdir)) == 0
  return workdir


def _state(cfg, batch_size, tx):
  model = brt.build_model(config=cfg, seed=0)
  graphdef, params = nnx.split(model)
  carry = model.init_carry(batch_size)
  return graphdef, step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(1)),
                                       carry=carry, eval_carry=carry)


def _batch(cfg, batch_size, seed=0):
  toks = helpers.tokens(seed, batch_size, cfg.segment_length + 1)
  return {'inputs': toks[:, :-1], 'targets': toks[:, 1:], 'mask': np.ones(toks[:, 1:].shape, bool),
          'start': np.ones(batch_size, bool), 'num_bytes': np.full(batch_size, cfg.segment_length, np.int32)}


def test_train_step_on_a_2x4_mesh_equals_one_device():
  """The whole train step (forward, backward, update) sharded over 8 devices == one device, 1e-5.

  Plain SGD makes the update a linear function of the gradient; Adam and Adafactor take g/|g| on the
  first step, which turns the 1e-9 reassociation noise of near-zero gradients into lr-sized changes, so
  comparing their parameters would test the optimiser's conditioning, not the sharding.
  """
  import optax
  cfg = helpers.config('rec_fixed_skip', num_heads=4, head_dim=8, dropout_rate=0.0)
  tx, schedule = optax.sgd(0.1), (lambda step: 0.1)
  graphdef, state = _state(cfg, 4, tx)
  batch = _batch(cfg, 4)
  fn = lambda s, b: step_lib.train_step(graphdef, tx, schedule, s, b, dropout=False)
  one, m1 = jax.jit(fn)(state, batch)
  mesh = sharding.make_mesh(data=2, model=4)
  p_sh = sharding.param_shardings(mesh, state.params)
  placed = state._replace(params=jax.device_put(state.params, p_sh))
  eight, m8 = jax.jit(fn)(placed, {k: jax.device_put(v, sharding.batch_sharding(mesh, v.shape))
                                    for k, v in batch.items()})
  helpers.assert_close(eight.params, one.params, 1e-5, 'params after a sharded step')
  helpers.assert_close(eight.carry, one.carry, 1e-5, 'carry after a sharded step')
  assert abs(float(m8['loss']) - float(m1['loss'])) <= 1e-5


def test_eval_carry_never_leaks_into_training():
  cfg = helpers.config('rec_fixed_skip', dropout_rate=0.0)
  train_cfg = configs.TrainConfig(optimizer='adafactor', warmup_steps=1)
  tx, schedule = optim.optimizer(train_cfg), optim.schedule(train_cfg)
  graphdef, state = _state(cfg, 2, tx)
  train = jax.jit(lambda s, b: step_lib.train_step(graphdef, tx, schedule, s, b, dropout=False))
  evaluate = jax.jit(lambda s, b: step_lib.eval_step(graphdef, s, b))
  state, _ = train(state, _batch(cfg, 2, 0))
  evaluated, _ = evaluate(state, _batch(cfg, 2, 5))
  assert np.max(np.abs(np.asarray(evaluated.eval_carry.states[0]) - np.asarray(state.eval_carry.states[0]))) > 0
  helpers.assert_close(evaluated.carry, state.carry, 0.0, 'train carry after eval')
  helpers.assert_close(evaluated.params, state.params, 0.0, 'params after eval')
  after_eval, _ = train(evaluated, _batch(cfg, 2, 1))
  without, _ = train(state, _batch(cfg, 2, 1))
  helpers.assert_close(after_eval.params, without.params, 0.0, 'training after eval')


def test_an_evaluation_leaves_no_trace_in_the_saved_state(whole):
  """Checkpoint 2 is written after the evaluation at step 2: its eval carry is fresh (zeros), as it is
  when a preemption cuts an evaluation short, so resumed == uninterrupted holds either way."""
  rows = [json.loads(l) for l in (whole / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows if r['split'] == 'validation'] == [2, 4]  # the evaluation ran
  saved = _checkpoint_state(whole, 2)
  leaves = jax.tree.leaves(saved['eval_carry'])
  assert leaves and not any(np.any(np.asarray(x)) for x in leaves)
  assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(saved['carry']))  # the training carry is kept


def test_bad_input_fails_in_one_line_and_keeps_checkpoints(tmp_path, capsys):
  assert brt_train(['--gin_file=gin/experiments/nope.gin', f'--workdir={tmp_path}/a']) == 2
  assert "gin file 'gin/experiments/nope.gin' not found" in capsys.readouterr().err
  assert brt_train(_args(tmp_path / 'b') + ['--gin_param=configs.TrainConfig.stepz = 3']) == 2
  assert "doesn't have a parameter named 'stepz'" in capsys.readouterr().err
  blocker = tmp_path / 'file'
  blocker.write_text('not a folder')
  assert brt_train(_args(blocker / 'sub', steps=2)) == 2
  assert 'cannot write to workdir' in capsys.readouterr().err


def test_checkpoint_of_another_config_is_a_clear_error_and_stays(tmp_path, whole, capsys):
  run = tmp_path / 'run'
  shutil.copytree(whole, run)
  assert brt_train(_args(run, steps=6) + ['--gin_param=configs.ModelConfig.d_model = 48']) == 2
  err = capsys.readouterr().err
  assert 'does not fit this config' in err and err.count('\n') == 1
  assert sorted(p.name for p in (run / 'checkpoints').iterdir() if p.name.isdigit()) == ['2', '4']


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path, whole, capsys):
  run = tmp_path / 'run'
  shutil.copytree(whole, run)
  for f in (run / 'checkpoints' / '4' / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 1000:
      f.write_bytes(f.read_bytes()[:100])  # truncate the array data of the newest checkpoint
  capsys.readouterr()
  assert brt_train(_args(run, steps=3)) == 0
  out = capsys.readouterr().out
  assert f'resumed from {run}/checkpoints/2' in out and (run / 'checkpoints' / '3').is_dir()


def test_metrics_go_to_jsonl_and_tensorboard_alike(whole):
  assert (whole / 'config.gin').read_text().count('configs.ModelConfig') > 3
  rows = [json.loads(l) for l in (whole / 'metrics.jsonl').read_text().splitlines()]
  train_rows = [r for r in rows if r['split'] == 'train']
  assert [r['step'] for r in train_rows] == [1, 2, 3, 4]
  for key in ('loss', 'bits_per_token', 'bits_per_byte', 'perplexity', 'accuracy', 'learning_rate',
              'grad_norm', 'tokens_per_s', 'model_flops_per_token', 'mfu'):
    assert all(np.isfinite(r[key]) for r in train_rows), key
  events = summaries.read_events(whole / 'tensorboard' / 'train')
  tb = {(step, tag): value for step, tag, value in events}
  for r in train_rows:
    assert tb[(r['step'], 'loss')] == pytest.approx(r['loss'], rel=1e-6)
    assert tb[(r['step'], 'grad_norm')] == pytest.approx(r['grad_norm'], rel=1e-6)
  validation = summaries.read_events(whole / 'tensorboard' / 'validation')
  assert (4, 'bits_per_byte') in {(s, t) for s, t, _ in validation}
  # The recurrent layer's diagnostics, every evaluation: gate openness, state change, the state's share.
  eval_rows = [r for r in rows if r['split'] == 'validation']
  names = [k for k in eval_rows[0] if '/layer' in k]
  (layer,) = configs.ModelConfig(**_model_fields(whole)).recurrent_indices
  assert names == [f'{n}/layer{layer}' for n in ('gate_open', 'state_change', 'state_share')]
  assert [r['step'] for r in eval_rows] == [2, 4]
  tb = {(step, tag): value for step, tag, value in validation}
  for r in eval_rows:
    assert 0 < r[names[0]] < 1 and r[names[1]] > 0 and 0 < r[names[2]] < 1, r
    assert all(tb[(r['step'], n)] == pytest.approx(r[n], rel=1e-6) for n in names)


def test_brt_eval_streams_whole_documents_of_another_task(tmp_path, whole, capsys):
  """brt-eval on a text folder == the model run over each whole document in one call (3 segments with the
  carry passed across == one long segment), so the data, the carry and the byte count are all right."""
  folder = tmp_path / 'texts'
  folder.mkdir()
  texts = {'a.txt': 'It is a truth universally acknowledged, that a single man in possession of a fort',
           'b.txt': 'Call me Ishmael. Some years ago, never mind how long.'}
  for name, text in texts.items():
    (folder / name).write_text(text)
  capsys.readouterr()
  losses = tmp_path / 'losses.tsv'
  assert brt_eval([f'--workdir={whole}', '--split=test', '--task=text_folder_bytes', f'--data_dir={folder}',
                   f'--losses_file={losses}']) == 0
  out = capsys.readouterr().out
  got_bpb = float(out.split('bits per byte: ')[1].split()[0])
  got_bpt = float(out.split('bits per token: ')[1].split()[0])

  cfg = brt.ModelConfig(**{**vars(configs.ModelConfig()), **_model_fields(whole)})
  model = brt.build_model(config=cfg, seed=0)
  params, apply, _ = brt.functional(model)
  saved = _checkpoint_state(whole, 4)['params']
  leaves = jax.tree.leaves(saved)  # same key order: the saved dicts only add a 'value' level
  assert [np.shape(x) for x in leaves] == [x.shape for x in jax.tree.leaves(params)]
  params = jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(x) for x in leaves])
  nats, count = 0.0, 0
  for text in texts.values():
    targets = np.frombuffer(text.encode(), np.uint8).astype(np.int32) + 3
    n = -(-len(targets) // cfg.segment_length) * cfg.segment_length
    inputs = np.zeros(n, np.int32)
    inputs[1:len(targets)] = targets[:-1]
    logits, _ = apply(params, inputs[None], model.init_carry(1), np.ones(1, bool))
    logp = jax.nn.log_softmax(np.asarray(logits[0, :len(targets)], np.float64))
    nats += -float(np.sum(np.take_along_axis(np.asarray(logp), targets[:, None], 1)))
    count += len(targets)
  assert got_bpb == pytest.approx(nats / np.log(2) / count, rel=1e-5)
  assert got_bpt == got_bpb  # bytes vocabulary: one token per byte
  rows = [line.split('\t') for line in losses.read_text().splitlines()[1:]]
  assert len(rows) == count and {r[0] for r in rows} == {'0', '1'}
  assert [int(r[1]) for r in rows if r[0] == '1'] == list(range(len(texts['b.txt'])))
  assert sum(float(r[3]) for r in rows) / count == pytest.approx(got_bpb, rel=1e-4)


def _model_fields(workdir):
  fields = {}
  for line in (workdir / 'config.gin').read_text().splitlines():
    if line.startswith('configs.ModelConfig.'):
      key, value = line[len('configs.ModelConfig.'):].split(' = ')
      fields[key] = eval(value)  # the literals gin wrote  # pylint: disable=eval-used
  return fields


def test_load_dir_starts_from_another_runs_parameters(tmp_path, whole, capsys):
  run = tmp_path / 'finetune'
  args = _args(run, steps=1) + [f'--load_dir={whole}', '--reset_optimizer',
                                '--gin_param=configs.TrainConfig.learning_rate = 1e-9']
  capsys.readouterr()
  assert brt_train(args) == 0
  assert f'started from the parameters of {whole}/checkpoints/4 (optimiser reset)' in capsys.readouterr().out
  loaded, source = _checkpoint_state(run, 1), _checkpoint_state(whole, 4)
  assert int(loaded['step']) == 1  # a new run: its own step count, carries and data cursor
  helpers.assert_close(loaded['params'], source['params'], 1e-6, 'fine-tuned params after one tiny step')
  fresh = _checkpoint_state(whole, 2)['params']
  gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(loaded['params']), jax.tree.leaves(fresh)))
  assert gap > 1e-4
  assert brt_train(_args(tmp_path / 'x', steps=1) + [f'--load_dir={tmp_path}/none']) == 2
  assert 'has no checkpoints folder' in capsys.readouterr().err


def test_conflicting_gin_files_fail_naming_binding_and_files(tmp_path, capsys):
  mixed = tmp_path / 'mixed.gin'
  mixed.write_text("include 'experiments/tiny/xl.gin'\ninclude 'size/small.gin'\n")
  assert brt_train([f'--gin_file={mixed}', '--gin_file=task/pg_mini_bytes.gin', f'--workdir={tmp_path}/w']) == 2
  err = capsys.readouterr().err
  assert 'conflicting gin bindings for configs.ModelConfig.' in err and 'size/tiny.gin' in err
  assert 'size/small.gin' in err and err.count('\n') == 1
  assert not (tmp_path / 'w').exists()  # failed before any compute or write
  # Overrides are not conflicts: a later --gin_file, --gin_param, and anything over base.gin.
  assert ginconf_parse_ok(['experiments/tiny/xl.gin', 'size/small.gin'])
  assert ginconf_parse_ok(['experiments/local_cpu.gin'])
  assert brt_train(['--gin_file=experiments/paper/xl512.gin', f'--workdir={tmp_path}/w']) == 2
  assert 'DataConfig.task is required' in capsys.readouterr().err


def ginconf_parse_ok(files):
  from block_recurrent import ginconf
  ginconf.parse(files)
  return True


def test_brt_generate_streams_deterministically_and_fails_cleanly(tmp_path, whole, capsys):
  args = [f'--workdir={whole}', '--prompt=It is a truth', '--max_new_tokens=20', '--temperature=0']
  capsys.readouterr()
  assert brt_generate(args) == 0 and brt_generate(args) == 0
  first, second = capsys.readouterr().out.split('\n')[:2]
  assert first == second and len(first) >= 1
  bad = tmp_path / 'bad.txt'
  bad.write_bytes(b'caf\xe9')
  assert brt_generate([f'--workdir={whole}', f'--prompt_file={bad}']) == 2
  assert 'is not UTF-8 (byte 3)' in capsys.readouterr().err
  empty = tmp_path / 'untrained'
  empty.mkdir()
  shutil.copy(whole / 'config.gin', empty / 'config.gin')
  assert brt_generate([f'--workdir={empty}', '--max_new_tokens=3']) == 2
  assert 'has no checkpoint' in capsys.readouterr().err


def _texts(folder, **texts):
  folder.mkdir()
  for name, text in texts.items():
    (folder / name).write_text(text)
  return folder


LONG = ('It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of '
        'foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, '
        'it was the season of Darkness, it was the spring of hope, it was the winter of despair. ') * 2


def test_brt_eval_by_position_buckets_add_up_to_the_whole_evaluation(tmp_path, whole, capsys):
  folder = _texts(tmp_path / 'texts', **{'a.txt': LONG, 'b.txt': 'Call me Ishmael. ' + 'é' * 70})  # 157 bytes
  out_json = tmp_path / 'by_position.json'
  capsys.readouterr()
  assert brt_eval([f'--workdir={whole}', '--split=test', '--task=text_folder_bytes', f'--data_dir={folder}',
                   '--by_position', f'--json={out_json}']) == 0
  out = capsys.readouterr().out
  result = json.loads(out_json.read_text())
  buckets = result['by_position']
  assert [(b['first'], b['last']) for b in buckets] == [(0, 63), (64, 255), (256, 1023)]  # LONG is 574 bytes
  assert sum(b['tokens'] for b in buckets) == result['tokens'] == len(LONG) + 157
  assert sum(b['bytes'] for b in buckets) == result['bytes'] == result['tokens']  # a byte vocabulary
  total_bits = result['bits_per_byte'] * result['bytes']
  assert sum(b['bits'] for b in buckets) == pytest.approx(total_bits, rel=1e-5)
  assert [b['tokens'] for b in buckets] == [64 + 64, 192 + 157 - 64, len(LONG) - 256]
  for b in buckets:
    assert b['bits_per_byte'] == pytest.approx(b['bits'] / b['bytes'])
    assert f'{b["first"]}-{b["last"]}' in out
  assert float(out.split('bits per byte: ')[1].split()[0]) == pytest.approx(result['bits_per_byte'], abs=1e-6)


def test_brt_eval_ablate_state_differs_on_a_recurrent_run_and_not_on_a_sliding_window(tmp_path, whole, capsys):
  folder = _texts(tmp_path / 'texts', **{'a.txt': LONG})
  flags = ['--split=test', '--task=text_folder_bytes', f'--data_dir={folder}']
  capsys.readouterr()
  assert brt_eval([f'--workdir={whole}', *flags, '--ablate_state=reset_each_segment']) == 0
  out = capsys.readouterr().out
  result = json.loads((whole / 'eval' / 'test-4.json').read_text())  # the default --json
  ablated = result['ablated']
  assert ablated['mode'] == 'reset_each_segment' and ablated['tokens'] == result['tokens']
  assert ablated['bits_per_byte'] != pytest.approx(result['bits_per_byte'], abs=1e-6)
  first = result['by_position'][0], ablated['by_position'][0]  # a document's first segment starts fresh anyway
  assert first[0]['bits'] != first[1]['bits']  # ... but 64 tokens are two segments of 32
  assert 'reset_each_segment - normal, bits per byte by position in the document:' in out
  # A sliding-window run has no state: the ablation is the normal evaluation, bit for bit.
  slide = tmp_path / 'slide'
  assert brt_train([f'--gin_file={f}' for f in ('gin/experiments/tiny/slide.gin', TINY[1])]
                   + [f'--gin_param={p}' for p in PARAMS] + ['--gin_param=configs.TrainConfig.num_steps = 1',
                                                            f'--workdir={slide}']) == 0
  assert brt_eval([f'--workdir={slide}', *flags, '--ablate_state=reset_each_block', f'--json={tmp_path}/s.json']) == 0
  result = json.loads((tmp_path / 's.json').read_text())
  assert result['ablated']['bits_per_byte'] == result['bits_per_byte']
  assert [b['bits'] for b in result['ablated']['by_position']] == [b['bits'] for b in result['by_position']]
