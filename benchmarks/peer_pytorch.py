"""Training throughput of our Block-Recurrent model beside the PyTorch port (block-recurrent-transformer-pytorch 0.4.4).

    bash benchmarks/install_peer.sh .venv      # once: CPU torch 2.13.0 and the port, into the project venv
    .venv/bin/python benchmarks/peer_pytorch.py [--rounds 5 --steps 5 --batch 4 --threads 2] [--full]

Both models get the same shape: config S of shared/design/peers.md by default (6 layers, d=256, 8 heads x 32,
MLP 1024, window = block 128, segment 512, 128 states, one recurrent layer at index -3 = the port's layer 4,
batch 4 = 2048 tokens per step); `--full` gives config M (d=512, 8 x 64, MLP 2048, window 256, segment 1024,
256 states), and each dimension has its own flag. A training step is forward, backward and an Adam update of
one segment, with the XL cache and the recurrent state carried on to the next segment in both. Each round
times `--steps` steps of each model in turn (the order alternating between rounds), so that the machine's load
hits both alike; the ratio ours / port is taken within a round. Each model runs in its own worker
process, blocked on a pipe while the other one runs (in one process the two thread pools compete). The
load average is recorded before, during and after: torch on 2 threads slows far more than XLA when
another process competes for the cores.

The two are not the same architecture (printed under the table): the port has single-head keys/values, a
gated (GEGLU) FFN sized 2/3 of ff_mult*d per half, rotary (xpos) positions, a causal mask over the previous
block plus the current one, bias-less LayerNorm and an untied output layer; ours has multi-head keys/values,
a ReLU FFN, T5 relative position biases, L2-normalised keys/queries with learned temperatures, a sliding
window of exactly W previous tokens, RMSNorm and a tied output embedding.

Ours runs data parallel over --cpu_devices XLA CPU devices (default 2, one per core: the batch's rows and
the carry split over the 'data' mesh axis, parameters replicated, as brt-train runs on a mesh; in one device
XLA:CPU leaves a core idle through much of the step), with token attention in --attention_sub_blocks query
groups (default 4; gin/options/sub_blocked_attention.gin). `--cpu_devices 1 --attention_sub_blocks 1` is the
plain single-device run.

Ours runs twice, each in its own process: as the paper has it (a key/value head per query head) and with
kv_heads=1 (multi-query: one key/value head shared by all query heads, in the token layers and the state,
as the port has); `--no_multi_query` leaves the second out.

`--bf16` runs both in mixed precision (ours with dtype=bfloat16, the port's forward under torch.autocast),
where the CPU has bfloat16 dot products (AVX512-BF16); float32 is the default and the headline comparison.

Writes results/peer_pytorch.json (raw numbers) and results/peer_pytorch.png (tokens/s per round);
results/peer_pytorch_bf16.* with --bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from block_recurrent import api, ginconf, sharding
from peer_port import build_port, differences, port_layer

GIN_FILE = 'gin/experiments/small/rec_fixed_skip.gin'
CONFIGS = {  # shared/design/peers.md
    'S': dict(layers=6, d_model=256, heads=8, head_dim=32, mlp_dim=1024, window=128, segment=512, states=128),
    'M': dict(layers=6, d_model=512, heads=8, head_dim=64, mlp_dim=2048, window=256, segment=1024, states=256),
}
OURS, OURS_MQ, PORT = 'ours (JAX/Flax)', 'ours, multi-query', 'port (PyTorch 0.4.4)'
WORKERS = {OURS: 'ours', OURS_MQ: 'ours_mq', PORT: 'port'}  # ours_mq: kv_heads=1, the port's single K/V head


def build_ours(a, batch, kv_heads=None):
  """(run(steps), parameter count, config) of our model; Adam (or Adafactor) on the whole pytree, jitted.
  kv_heads=1 gives multi-query attention (gin/options/multi_query.gin)."""
  bindings = ['configs.ModelConfig.dropout_rate = 0.0',
              f'configs.ModelConfig.num_layers = {a.layers}',
              f'configs.ModelConfig.d_model = {a.d_model}',
              f'configs.ModelConfig.num_heads = {a.heads}',
              f'configs.ModelConfig.head_dim = {a.head_dim}',
              f'configs.ModelConfig.mlp_dim = {a.mlp_dim}',
              f'configs.ModelConfig.window = {a.window}',
              f'configs.ModelConfig.segment_length = {a.segment}',
              f'configs.ModelConfig.num_states = {a.states}',
              f'configs.ModelConfig.recurrent_layers = ({a.recurrent_layer},)',
              f'configs.ModelConfig.kv_heads = {kv_heads}',
              f'configs.ModelConfig.attention_sub_blocks = {a.attention_sub_blocks}',
              f"configs.ModelConfig.dtype = '{'bfloat16' if a.bf16 else 'float32'}'",
              *a.gin_param]
  cfg = ginconf.model_config([GIN_FILE], bindings)
  model = api.build_model(config=cfg, seed=0)
  n_params = api.count_params(model)
  graphdef, params = nnx.split(model)
  if a.our_optimizer == 'adam':
    optimizer = optax.adam(a.lr)
  else:  # what benchmarks/train_throughput.py and our training use
    optimizer = optax.adafactor(1e-2, decay_rate=0.8, momentum=0.9, multiply_by_parameter_scale=True)
  opt_state = optimizer.init(params)
  start = jnp.zeros(batch, bool)
  # Data parallel over this process's XLA CPU devices (--cpu_devices, one per core), the way brt-train runs
  # on a mesh: the batch's rows and the carry split over 'data', parameters and optimizer state replicated.
  mesh = sharding.make_mesh(data=jax.device_count())
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  params, opt_state = jax.device_put((params, opt_state), replicated)
  start = jax.device_put(start, sharding.batch_sharding(mesh, start.shape))
  carry = model.init_carry(batch)
  carry = jax.device_put(carry, sharding.carry_shardings(mesh, carry))

  @jax.jit
  def step(params, opt_state, tokens, carry):
    def loss_fn(p):
      logits, new_carry = nnx.merge(graphdef, p)(tokens, carry, start)
      nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)
      return jnp.mean(nll), new_carry
    (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, carry, loss

  state = [params, opt_state, carry]
  # Bytes shifted past the 4 reserved ids of our byte vocabulary (260 ids).
  tokens = np.random.default_rng(0).integers(4, 260, (batch, a.segment)).astype(np.int32)
  tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, tokens.shape))

  def run(steps):
    loss = None
    for _ in range(steps):
      state[0], state[1], state[2], loss = step(state[0], state[1], tokens, state[2])
    return float(jax.block_until_ready(loss))

  return run, n_params, cfg


def stats(xs):
  xs = sorted(xs)
  return xs[0], statistics.median(xs), xs[-1]


def plot(path, tps, ratios, title):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={'width_ratios': [2, 1]})
  names = list(tps)
  ax1.boxplot([tps[n] for n in names], tick_labels=names, widths=0.5)
  for i, n in enumerate(names, 1):
    ax1.scatter(np.full(len(tps[n]), i) + np.linspace(-0.12, 0.12, len(tps[n])), tps[n], s=14, zorder=3)
  ax1.set_ylabel('training tokens/s (per round)')
  ax1.set_ylim(bottom=0)
  ax1.grid(axis='y', alpha=0.3)
  width = 0.8 / len(ratios)
  for j, (name, rs) in enumerate(ratios.items()):
    ax2.bar(np.arange(1, len(rs) + 1) + (j - (len(ratios) - 1) / 2) * width, rs, width, label=name)
  ax2.axhline(1.0, color='k', lw=0.8)
  ax2.axhline(1.5, color='tab:red', lw=0.8, ls='--')
  ax2.legend(fontsize=7)
  rounds = len(next(iter(ratios.values())))
  ax2.set_xticks(range(1, rounds + 1))
  ax2.set_xlabel('round')
  ax2.set_ylabel('ours / port (tokens/s); dashed: 1.5')
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _reply(proc, tag: str) -> dict:
  """The worker's next `@TAG {json}` line (anything else it prints is passed through)."""
  for line in proc.stdout:
    if line.startswith(f'@{tag} '):
      return json.loads(line[len(tag) + 2:])
    print(line, end='')
  raise RuntimeError(f'a benchmark worker ended before answering {tag} (exit {proc.wait()})')


def worker(a) -> None:
  """One model in this process: build, compile and warm up on `ready`, then `N` runs N timed steps and
  replies with the loss, `0` replies with the peak RSS and ends."""
  sys.stdin.readline()
  if a.worker in ('ours', 'ours_mq'):
    run, params, cfg = build_ours(a, a.batch, kv_heads=1 if a.worker == 'ours_mq' else None)
    info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()
            if isinstance(v, (int, float, str, bool, tuple, type(None)))}
    version = ''
  else:
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(a.threads)
    run, params, info = build_port(a, a.batch)
    version = torch.__version__
  t0 = time.perf_counter()
  run(1)  # compilation (ours) / first eager step (port)
  first = time.perf_counter() - t0
  run(5)  # warm-up: with a carried cache and state from here on (the first steps after start-up run slow)
  print('@READY ' + json.dumps({'params': int(params), 'first_step': first, 'info': info, 'torch': version}),
        flush=True)
  for line in sys.stdin:
    steps = int(line)
    if steps == 0:
      break
    print('@LOSS ' + json.dumps({'loss': float(run(steps))}), flush=True)
  print('@RSS ' + json.dumps({'rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads')
  parser.add_argument('--attention_sub_blocks', type=int, default=4,
                      help='ours: token attention in this many query groups per block '
                           '(gin/options/sub_blocked_attention.gin); 1: one [W, 2W] product')
  parser.add_argument('--cpu_devices', type=int, default=2,
                      help="XLA CPU devices for ours (one per core), the batch split over them as brt-train's data "
                           'mesh axis does; 1: one device')
  parser.add_argument('--full', action='store_true', help='config M of peers.md instead of config S')
  for name, value in CONFIGS['S'].items():
    parser.add_argument(f'--{name}', type=int, default=None, help=f'(config S: {value})')
  parser.add_argument('--recurrent_layer', type=int, default=-3, help='our index; the port gets index %% L + 1')
  parser.add_argument('--lr', type=float, default=3e-4)
  parser.add_argument('--our_optimizer', choices=('adam', 'adafactor'), default='adam',
                      help='adam (default) for parity with the port; adafactor as in train_throughput.py')
  parser.add_argument('--port_flash', action='store_true',
                      help="the port's use_flash_attn (F.scaled_dot_product_attention) instead of its einsum")
  parser.add_argument('--gin_param', action='append', default=[], help='extra binding for our model')
  parser.add_argument('--bf16', action='store_true',
                      help='both in mixed precision: ours with dtype=bfloat16, the port under torch.autocast')
  parser.add_argument('--worker', choices=tuple(WORKERS.values()), default=None, help=argparse.SUPPRESS)
  parser.add_argument('--no_multi_query', action='store_true',
                      help='leave out our multi-query variant (kv_heads=1, the port\'s single K/V head)')
  parser.add_argument('--json', default=None, help='(results/peer_pytorch.json; _bf16.json with --bf16)')
  parser.add_argument('--png', default=None, help='(results/peer_pytorch.png; _bf16.png with --bf16)')
  a = parser.parse_args()
  base = CONFIGS['M' if a.full else 'S']
  for name, value in base.items():
    if getattr(a, name) is None:
      setattr(a, name, value)

  suffix = '_bf16' if a.bf16 else ''
  a.json = a.json or f'results/peer_pytorch{suffix}.json'
  a.png = a.png or f'results/peer_pytorch{suffix}.png'
  if a.worker:
    return worker(a)
  load_before = os.getloadavg()
  t_start = time.perf_counter()

  # Each model lives in its own process, idle (blocked on a pipe) while the other runs: in one process
  # XLA's and torch's thread pools spin and steal each other's cores.
  if a.batch % a.cpu_devices:
    parser.error(f'--batch {a.batch} does not split over --cpu_devices {a.cpu_devices}: pick a divisor')
  ours_env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '')
                                         + f' --xla_force_host_platform_device_count={a.cpu_devices}').strip())
  workers = {name: subprocess.Popen([sys.executable, os.path.abspath(__file__), *sys.argv[1:], '--worker', key],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                    env=ours_env if key != 'port' else None)
             for name, key in WORKERS.items() if not (a.no_multi_query and key == 'ours_mq')}
  n_params, first_step, losses, info, torch_version = {}, {}, {}, {}, ''
  for name, proc in workers.items():  # one at a time: compilation never overlaps the other's
    proc.stdin.write('ready\n')
    ready = _reply(proc, 'READY')
    n_params[name], first_step[name], info[name] = ready['params'], ready['first_step'], ready['info']
    torch_version = ready['torch'] or torch_version

  def runner(proc):
    def run(steps):
      proc.stdin.write(f'{steps}\n')
      return _reply(proc, 'LOSS')['loss']
    return run

  runners = {name: runner(proc) for name, proc in workers.items()}
  port_kwargs, cfg = info[PORT], info[OURS]
  tokens_per_step = a.batch * a.segment

  times = {name: [] for name in runners}
  load_rounds = []
  for r in range(a.rounds):
    load_rounds.append(os.getloadavg()[0])
    order = list(runners) if r % 2 == 0 else list(runners)[::-1]
    for name in order:
      t0 = time.perf_counter()
      losses[name] = runners[name](a.steps)
      times[name].append((time.perf_counter() - t0) / a.steps)
  load_after = os.getloadavg()
  rss_gb = {}
  for name, proc in workers.items():
    proc.stdin.write('0\n')
    rss_gb[name] = _reply(proc, 'RSS')['rss_gb']
    proc.wait(timeout=60)
  wall = time.perf_counter() - t_start

  tps = {name: [tokens_per_step / t for t in ts] for name, ts in times.items()}
  names = list(workers)
  ours_names = [n for n in names if n != PORT]
  ratios = {n: [o / p for o, p in zip(tps[n], tps[PORT])] for n in ours_names}
  optimizer_ours = ('Adam (optax), as the port' if a.our_optimizer == 'adam'
                    else 'Adafactor (optax), as our training')
  config_name = 'M' if a.full else 'S'
  if any(getattr(a, n) != v for n, v in base.items()):
    config_name += ' (modified)'
  if a.bf16:
    config_name += ', bfloat16'
  shape = (f'{a.layers} layers, d={a.d_model}, {a.heads} heads x {a.head_dim}, MLP {a.mlp_dim}, window {a.window}, '
           f'segment {a.segment}, {a.states} states, recurrent layer {a.recurrent_layer} (port: '
           f'{port_layer(a.recurrent_layer, a.layers)}), batch {a.batch} ({tokens_per_step} tokens/step)')

  print(f'\nconfig {config_name}: {shape}')
  print(f'{a.rounds} rounds x {a.steps} steps after compilation and 2 warm-up steps; jax {jax.__version__} '
        f'(cpu), torch {torch_version} with {a.threads} threads, one process per model, '
        f'{os.cpu_count()} CPUs, python {platform.python_version()}')
  print(f'load average (1/5/15 min) before: {" ".join(f"{x:.2f}" for x in load_before)}; '
        f'after: {" ".join(f"{x:.2f}" for x in load_after)}; 1-min at each round: '
        f'{" ".join(f"{x:.2f}" for x in load_rounds)}\n')
  row = lambda label, cells: print(f'| {label} | ' + ' | '.join(cells) + ' |')
  row(f'config {config_name}', names)
  print('|---' * (len(names) + 1) + '|')
  row('parameters', [f'{n_params[n]:,}' for n in names])
  row('tokens/s min / median / max', [' / '.join(f'{x:,.0f}' for x in stats(tps[n])) for n in names])
  row('step ms (median)', [f'{1000 * statistics.median(times[n]):.0f}' for n in names])
  row('first step s (compilation)', [f'{first_step[n]:.1f}' for n in names])
  row('loss after the last round', [f'{losses[n]:.3f}' for n in names])
  row('tokens/s over the port\'s, per round: min / median / max',
      [' / '.join(f'{x:.2f}' for x in stats(ratios[n])) if n in ratios else '1' for n in names])
  row('peak RSS GB', [f'{rss_gb[n]:.2f}' for n in names])
  print(f'\n| difference | {OURS} | {PORT} |')
  print('|---|---|---|')
  for aspect, ours, port in differences(a, optimizer_ours):
    print(f'| {aspect} | {ours} | {port} |')
  if OURS_MQ in names:
    print(f'\n{OURS_MQ}: {OURS} with kv_heads=1 (gin/options/multi_query.gin): one key/value head of '
          f'{a.head_dim} shared by the {a.heads} query heads in every attention, as the port has; all other '
          'differences stay.')
  print(f'\nwall time {wall:.0f} s')

  record = {
      'config': config_name, 'shape': shape, 'args': vars(a), 'port_kwargs': port_kwargs,
      'our_config': cfg,
      'tokens_per_step': tokens_per_step, 'parameters': n_params, 'first_step_s': first_step,
      'step_s': times, 'tokens_per_s': tps, 'ratio_over_port': ratios,
      'load_before': load_before, 'load_after': load_after, 'load_at_rounds': load_rounds,
      'final_loss': losses, 'peak_rss_gb': rss_gb, 'wall_s': wall,
      'versions': {'jax': jax.__version__, 'torch': torch_version, 'python': sys.version.split()[0]},
      'differences': differences(a, optimizer_ours),
  }
  os.makedirs(os.path.dirname(a.json) or '.', exist_ok=True)
  with open(a.json, 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=1)
  plot(a.png, tps, ratios, f'config {config_name}: {shape}\nload avg {load_before[0]:.2f} -> {load_after[0]:.2f}; '
       f'ours: {optimizer_ours}')
  print(f'wrote {a.json} and {a.png}')


if __name__ == '__main__':
  main()
