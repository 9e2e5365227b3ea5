"""The bad flag values of docs/reliability.md's table "Flag values" (issue 20), one Case each, and the check
every case passes: a single stderr line, `PROG: error: ...`, with exit status 2, found where the flag is
read: before gin is parsed, a checkpoint restored, a process group joined, a vocabulary trained or a step
taken (those are made to fail here, so a check that came too late would show as exit 1). Each command's
test file (tests/cli/test_<command>.py) runs the cases of its program; tests/cli/test_contract.py checks
that the table lists exactly CASES. The rows come from BRT_FLAG_TABLE=rows.md pytest tests/cli."""

import os
from typing import Callable, NamedTuple

import jax

import doc_tables
from bad_inputs import PROGRAMS, TINY, Ctx, normalise

from block_recurrent.data import vocab
from block_recurrent.train import loop, scoring


class Case(NamedTuple):
  id: str
  prog: str
  argv: Callable[[Ctx], list[str]]
  fragment: str
  what: str  # the bad input, in words


def _processes(address, num='2', pid='1'):
  return lambda c: c.train(f'--coordinator_address={address}', f'--num_processes={num}', f'--process_id={pid}')


def _generate(*flags):
  return lambda c: [f'--workdir={c.tmp}/run', '--max_new_tokens=1', *flags]


def _eval(*flags):
  return lambda c: [f'--workdir={c.tmp}/run', *flags]


HUGE = str(10 ** 30)

CASES = [
    # brt-train: checked right after argparse
    Case('cli-empty-workdir', 'brt-train', lambda c: TINY + ['--workdir='], '--workdir is empty',
         '`brt-train --workdir=` (it trained into the current folder)'),
    Case('cli-empty-load-dir', 'brt-train', lambda c: c.train('--load_dir='), '--load_dir is empty',
         '`brt-train --load_dir=` (it looked for checkpoints in the current folder)'),
    Case('cli-coordinator-empty-port', 'brt-train', _processes('localhost:'), 'a port from 1 to 65535',
         '`--coordinator_address=localhost:` (no port)'),
    Case('cli-coordinator-bad-port', 'brt-train', _processes('localhost:abc'), 'a port from 1 to 65535',
         '`--coordinator_address=localhost:abc`'),
    Case('cli-coordinator-port-out-of-range', 'brt-train', _processes('localhost:99999'), 'a port from 1 to 65535',
         '`--coordinator_address=localhost:99999`'),
    Case('cli-coordinator-port-zero', 'brt-train', _processes('localhost:0'), 'a port from 1 to 65535',
         '`--coordinator_address=localhost:0`'),
    Case('cli-coordinator-no-host', 'brt-train', _processes(':1234'), 'with a host name or address',
         '`--coordinator_address=:1234` (no host)'),
    Case('cli-zero-processes', 'brt-train', _processes('localhost:1234', num='0', pid='0'),
         '--num_processes 0: give the number of processes in the run', '`--num_processes=0`'),
    Case('cli-huge-processes', 'brt-train', _processes('localhost:1234', num=HUGE),
         f'--num_processes {HUGE}: give the number of processes in the run', '`--num_processes=10**30`'),
    # brt-eval: before the workdir's config.gin is read
    Case('cli-eval-empty-task', 'brt-eval', _eval('--task='), '--task is empty',
         '`brt-eval --task=` (it scored the run\'s own task)'),
    Case('cli-eval-empty-data-dir', 'brt-eval', _eval('--task=text_folder_bytes', '--data_dir='),
         '--data_dir is empty', '`brt-eval --task=text_folder_bytes --data_dir=` (it scored the current folder)'),
    Case('cli-eval-empty-spm-path', 'brt-eval', _eval('--task=pg_mini_tokens', '--spm_path='),
         '--spm_path is empty', '`brt-eval --spm_path=`'),
    Case('cli-eval-empty-losses-file', 'brt-eval', _eval('--losses_file='), '--losses_file is empty',
         '`brt-eval --losses_file=` (it wrote no losses)'),
    Case('cli-eval-empty-json', 'brt-eval', _eval('--by_position', '--json='), '--json is empty',
         '`brt-eval --by_position --json=`'),
    Case('cli-eval-json-folder', 'brt-eval', lambda c: [f'--workdir={c.tmp}/run', '--by_position', f'--json={c.tmp}'],
         'is a folder: give a file name such as', '`brt-eval --by_position --json=<a folder>`'),
    Case('cli-eval-negative-max-segments', 'brt-eval', _eval('--max_segments=-1'),
         '--max_segments -1: give a positive number of segments, or 0 for all', '`brt-eval --max_segments=-1`'),
    # brt-generate: before the checkpoint is restored
    Case('cli-top-k-over-vocab', 'brt-generate', lambda c: [f'--workdir={c.trained}', '--top_k=261'],
         '--top_k 261 is more than the 260 tokens of the model', '`--top_k=261` on a model of 260 tokens'),
    Case('cli-huge-top-k', 'brt-generate', lambda c: [f'--workdir={c.trained}', f'--top_k={HUGE}'],
         f'--top_k {HUGE} is more than the 260 tokens of the model', '`--top_k=10**30`'),
    Case('cli-negative-seed', 'brt-generate', _generate('--seed=-1'), '--seed -1: give an integer from 0 to 4294967295',
         '`--seed=-1`'),
    Case('cli-seed-too-large', 'brt-generate', _generate(f'--seed={2 ** 32}'),
         '--seed 4294967296: give an integer from 0 to 4294967295', '`--seed=4294967296` (2**32)'),
    Case('cli-huge-seed', 'brt-generate', _generate(f'--seed={HUGE}'), f'--seed {HUGE}: give an integer from 0',
         '`--seed=10**30`'),
    Case('cli-prompt-not-utf8', 'brt-generate', _generate('--prompt=caf\udce9'), '--prompt is not UTF-8 (byte 3)',
         "`--prompt=$'caf\\xe9'` (Latin-1 bytes on the command line)"),
    # brt-info
    Case('cli-info-huge-memory', 'brt-info', lambda c: ['--layer_costs', '--memory', '128', HUGE],
         'every GTrXL memory must be at most 65536', '`brt-info --layer_costs --memory 128 10**30`'),
    Case('cli-info-memory-too-large', 'brt-info', lambda c: ['--layer_costs', '--memory', str(2 ** 40)],
         'every GTrXL memory must be at most 65536', '`brt-info --layer_costs --memory 1099511627776` (2**40)'),
    # brt-vocab: before the corpus is read
    Case('cli-vocab-huge-size', 'brt-vocab', lambda c: [f'--vocab_size={HUGE}', f'--output={c.tmp}/v'],
         f'--vocab_size {HUGE} is too large: give at most 1048576 pieces', '`brt-vocab --vocab_size=10**30`'),
    Case('cli-vocab-size-over-32-bits', 'brt-vocab', lambda c: [f'--vocab_size={2 ** 31}', f'--output={c.tmp}/v'],
         '--vocab_size 2147483648 is too large', '`brt-vocab --vocab_size=2147483648` (2**31)'),
    Case('cli-vocab-size-stalls', 'brt-vocab', lambda c: [f'--vocab_size={2 ** 31 - 1}', f'--output={c.tmp}/v'],
         '--vocab_size 2147483647 is too large', '`brt-vocab --vocab_size=2147483647` (ran over 10 minutes)'),
    Case('cli-vocab-empty-data-dir', 'brt-vocab', lambda c: ['--task=text_folder', '--data_dir=', f'--output={c.tmp}/v'],
         '--data_dir is empty', '`brt-vocab --task=text_folder --data_dir=` (it read the current folder)'),
]


def _must_not_run(what: str):
  def fail(*args, **kwargs):
    raise AssertionError(f'{what} ran before the flags were checked')
  return fail


def of(prog: str) -> list[Case]:
  """The cases of one program, in the table's order."""
  return [c for c in CASES if c.prog == prog]


def check(case: Case, tmp_path, request, monkeypatch, capsys) -> None:
  argv = case.argv(Ctx(tmp_path, request))  # trains the shared run first where a case reads it
  for module, name in [(loop, 'train'), (scoring, 'restore_workdir'), (jax.distributed, 'initialize'),
                       (vocab, 'train_sentencepiece')]:
    monkeypatch.setattr(module, name, _must_not_run(f'{module.__name__}.{name}'))
  monkeypatch.chdir(tmp_path)  # an empty folder flag that slipped through would write here, not in the checkout
  capsys.readouterr()
  status = PROGRAMS[case.prog](argv)
  err = capsys.readouterr().err
  assert status == 2, err
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'{case.prog}: error: '), err
  assert case.fragment in lines[0], err
  target = os.environ.get('BRT_FLAG_TABLE')
  if target:
    with open(target, 'a', encoding='utf-8') as f:
      message = normalise(lines[0], tmp_path).replace('|', '\\|')
      f.write(f'| {case.id} | cli | {case.what} | 2 | `` {message} `` |\n')


def doc_rows() -> dict[str, str]:
  return doc_tables.rows('### Flag values')
