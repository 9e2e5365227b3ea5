"""Bad values of the commands' flags (issue 20): each one is a single stderr line, `PROG: error: ...`, with
exit status 2, found where the flag is read: before gin is parsed, a checkpoint restored, a process group
joined, a vocabulary trained or a step taken (those are made to fail here, so a check that came too late
would show as exit 1). The rows for docs/reliability.md come from BRT_FLAG_TABLE=rows.md pytest this file."""

import argparse
import os
import pathlib
from typing import Callable, NamedTuple

import jax
import pytest

from helpers import MESH

from block_recurrent import configs
from block_recurrent.train import distributed
from block_recurrent.cli import info
from block_recurrent.cli.generate import _check_sampling, _check_top_k, main as generate_main
from block_recurrent.cli.eval import main as eval_main
from block_recurrent.cli.train import main as train_main
from block_recurrent.train import loop, scoring
from block_recurrent.cli import vocab as vocab_cli
from block_recurrent.data import vocab

REPO = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = {'brt-train': train_main, 'brt-eval': eval_main, 'brt-generate': generate_main, 'brt-info': info.main,
            'brt-vocab': vocab_cli.main}
TINY = ['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/task/pg_mini_bytes.gin']
ONE_STEP = ['configs.TrainConfig.num_steps = 1', 'configs.TrainConfig.eval_segments = 1',
            'configs.DataConfig.batch_size = 2', *MESH]
_TRAINED = []  # the trained run's path, for _normalise


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One tiny 1-step run (vocab_size 260), for the cases that read a workdir's config.gin."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  assert train_main(TINY + [f'--gin_param={p}' for p in ONE_STEP] + [f'--workdir={workdir}']) == 0
  _TRAINED.append(workdir)
  return workdir


class Ctx:

  def __init__(self, tmp: pathlib.Path, request):
    self.tmp, self._request = tmp, request

  @property
  def trained(self) -> pathlib.Path:
    return self._request.getfixturevalue('trained')

  def train(self, *flags) -> list[str]:
    return TINY + [f'--workdir={self.tmp}/w', *flags]


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


def _normalise(text: str, tmp: pathlib.Path) -> str:
  for path, name in [(p, '<workdir>') for p in _TRAINED] + [(tmp, '<tmp>'), (REPO, '<repo>')]:
    text = text.replace(str(path), name)
  return text


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_flag_value_is_one_line_and_exit_2(case, tmp_path, request, monkeypatch, capsys):
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
      message = _normalise(lines[0], tmp_path).replace('|', '\\|')
      f.write(f'| {case.id} | cli | {case.what} | 2 | `` {message} `` |\n')


def test_good_values_at_the_bounds_pass():
  """The checks reject only what cannot work: the edges of each range are accepted."""
  for address in ('localhost:1', '10.0.0.2:8476', '[::1]:65535', 'tpu-worker-0.internal:8476'):
    distributed.check_args(address, 2, 1)
  distributed.check_args('localhost:1234', 1, 0)
  distributed.check_args(None, None, None)
  distributed.check_args(auto=True)
  for seed in (0, 2 ** 32 - 1):
    _check_sampling(argparse.Namespace(max_new_tokens=0, temperature=0.0, top_k=0, top_p=1.0, seed=seed))
  _check_top_k(260, configs.ModelConfig(vocab_size=260), 'run')
  with pytest.raises(configs.ConfigError, match='--top_k 261'):
    _check_top_k(261, configs.ModelConfig(vocab_size=260), 'run')


def test_doc_table_lists_every_case():
  import doc_tables
  rows = doc_tables.rows('### Flag values')
  assert sorted(rows) == sorted(c.id for c in CASES)
  for case in CASES:
    assert case.fragment in rows[case.id], case.id
