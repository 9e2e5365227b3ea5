"""brt-generate on long prompts: wall seconds and peak resident memory of the command against the prompt's
size, for a workdir trained 2 steps.

    .venv/bin/python benchmarks/prefill.py [--sizes 1024 16384 262144 1048576]
        [--experiments tiny/rec_fixed_skip.gin local_cpu.gin] [--before DIR --before_sizes 1024 16384]

Each row is one fresh `.venv/bin/brt-generate --workdir=W --prompt_file=F --max_new_tokens=16
--temperature=0` process; its peak RSS is the child's own (os.wait4). Prompts are the PG-mini novels
concatenated and cut to the byte count at a UTF-8 boundary. `--before DIR` also runs brt-generate from
another checkout of the code (e.g. `git worktree add DIR COMMIT`) on the smaller prompts, for comparison.
Writes results/prefill.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import common  # first: puts the checkout on sys.path

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOKS = pathlib.Path('/work/shared/data/pg_mini')
BIN = ROOT / '.venv' / 'bin'


def corpus(books: pathlib.Path) -> bytes:
  """Every novel of the folder's splits, decompressed and concatenated in a fixed order."""
  files = sorted(books.glob('*/*.txt.xz')) + sorted(books.glob('*/*.txt'))
  if not files:
    sys.exit(f'no *.txt.xz or *.txt novels under {books}')
  return b''.join(lzma.decompress(f.read_bytes()) if f.suffix == '.xz' else f.read_bytes() for f in files)


def cut(text: bytes, size: int) -> bytes:
  """The first `size` bytes or fewer, ending at a UTF-8 character boundary."""
  if size > len(text):
    sys.exit(f'the novels hold {len(text)} bytes, fewer than the {size} asked for')
  while size and size < len(text) and (text[size] & 0xC0) == 0x80:  # text[size] continues a character
    size -= 1
  return text[:size]


def measure(cmd: list[str], log: pathlib.Path, timeout: float, cwd: pathlib.Path, env=None) -> dict:
  """Runs cmd to completion (killed after `timeout` s): wall seconds, the child's peak RSS, exit status."""
  start = time.perf_counter()
  with open(log, 'wb') as out:
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
  proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
  return {'seconds': time.perf_counter() - start, 'peak_rss_mib': usage.ru_maxrss / 1024,
          'exit': proc.returncode, 'timed_out': proc.returncode == -9}


def program(src: pathlib.Path | None, name: str) -> list[str]:
  """The command `name` (brt-train or brt-generate) of this checkout, or of the checkout at src."""
  if src is None:
    return [str(BIN / name)]
  entry = {'brt-train': 'run', 'brt-generate': 'run_generate'}[name]
  return [str(BIN / 'python'), '-c', f'import sys; from block_recurrent.main import {entry}; '
          f'sys.argv[0] = "{name}"; {entry}()']


def train(src: pathlib.Path | None, experiment: str, workdir: pathlib.Path) -> None:
  """A workdir trained 2 steps by brt-train of the same checkout (checkpoint formats may differ)."""
  flags = [f'--gin_file=gin/experiments/{experiment}', '--gin_file=gin/task/pg_mini_bytes.gin',
           '--gin_param=configs.TrainConfig.num_steps = 2', '--gin_param=configs.TrainConfig.eval_segments = 2',
           f'--workdir={workdir}']
  result = subprocess.run(program(src, 'brt-train') + flags, cwd=src or ROOT, env=environment(src),
                          capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f'brt-train failed for {experiment}:\n{result.stderr[-2000:]}')


def environment(src: pathlib.Path | None):
  return None if src is None else {**os.environ, 'PYTHONPATH': str(src)}  # and cwd=src: '' leads sys.path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[1024, 16384, 262144, 1048576])
  parser.add_argument('--experiments', nargs='+', default=['tiny/rec_fixed_skip.gin'],
                      help='gin files under gin/experiments/ (e.g. local_cpu.gin too)')
  parser.add_argument('--books', default=str(BOOKS), help='a folder of PG-mini splits (*/*.txt.xz)')
  parser.add_argument('--before', default=None, help='another checkout to run brt-generate from, for comparison')
  parser.add_argument('--before_sizes', type=int, nargs='+', default=[1024, 16384])
  parser.add_argument('--timeout', type=float, default=900, help='seconds before a run is killed')
  args = parser.parse_args()

  text = corpus(pathlib.Path(args.books))
  rows = []
  with tempfile.TemporaryDirectory(prefix='brt-prefill-') as tmp:
    tmp = pathlib.Path(tmp)
    prompts = {}
    for size in sorted(set(args.sizes) | set(args.before_sizes if args.before else [])):
      prompts[size] = tmp / f'prompt_{size}.txt'
      prompts[size].write_bytes(cut(text, size))
    runs = [(None, size) for size in args.sizes]
    if args.before:
      runs += [(pathlib.Path(args.before).resolve(), size) for size in args.before_sizes]
    for experiment in args.experiments:
      for src in dict.fromkeys(src for src, _ in runs):
        workdir = tmp / f"{experiment.replace('/', '_')}_{'before' if src else 'now'}"
        train(src, experiment, workdir)
        for size in [size for s, size in runs if s == src]:
          flags = [f'--workdir={workdir}', f'--prompt_file={prompts[size]}', '--max_new_tokens=16', '--temperature=0']
          log = tmp / 'generate.log'
          r = measure(program(src, 'brt-generate') + flags, log, args.timeout, src or ROOT, environment(src))
          r.update(experiment=experiment, code='this checkout' if src is None else f'before ({src.name})',
                   prompt_bytes=prompts[size].stat().st_size, output=log.read_text(errors='replace')[-300:])
          rows.append(r)
          print(json.dumps({k: v for k, v in r.items() if k != 'output'}), flush=True)

  def seconds(r):
    return f'> {args.timeout:.0f} (killed)' if r['timed_out'] else f"{r['seconds']:.1f}"

  lines = [common.table(['experiment', 'code', 'prompt bytes', 'seconds', 'peak RSS MiB', 'exit'],
                        [[r['experiment'], r['code'], r['prompt_bytes'], seconds(r), f"{r['peak_rss_mib']:.0f}",
                          r['exit']] for r in rows])]
  lines += ['', f'{common.machine()}. Each row is one brt-generate process (`--max_new_tokens=16 --temperature=0`) '
            'on a workdir trained 2 steps; seconds include starting Python, restoring the checkpoint and '
            'compiling.']
  text_md = '\n'.join(lines)
  print(text_md)
  common.RESULTS.mkdir(exist_ok=True)
  (common.RESULTS / 'prefill.md').write_text(text_md + '\n')
  (common.RESULTS / 'prefill.json').write_text(json.dumps(rows, indent=1) + '\n')


if __name__ == '__main__':
  main()
