"""The bad inputs of docs/reliability.md's table "Bad inputs tried", one Case each, and the check every
case passes: one line on stderr, `PROG: error: ...`, and exit status 2 (argparse's own errors: its usage
line, then that line); --debug raises instead. Each command's test file (tests/cli/test_<command>.py) runs
the cases of its program; tests/cli/test_contract.py checks that the table lists exactly CASES. Regenerate
the table's rows with BRT_RELIABILITY_TABLE=rows.md pytest tests/cli (rows in the order the files run).

Ctx and PROGRAMS serve tests/flag_values.py too; the trained run is conftest.py's `trained_run`."""

import pathlib
import shutil
from typing import Callable, NamedTuple

import pytest

import doc_tables
from helpers import MESH

from block_recurrent.cli import info
from block_recurrent.data import tasks
from block_recurrent.cli.eval import main as eval_main
from block_recurrent.cli.generate import main as generate_main
from block_recurrent.cli.train import main as train_main
from block_recurrent.cli import vocab as vocab_cli

REPO = pathlib.Path(__file__).resolve().parent.parent
PROGRAMS = {'brt-train': train_main, 'brt-eval': eval_main, 'brt-generate': generate_main, 'brt-info': info.main,
            'brt-vocab': vocab_cli.main}
TINY = ['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/task/pg_mini_bytes.gin']
FAST = ['configs.TrainConfig.num_steps = 2', 'configs.TrainConfig.checkpoint_every = 1',
        'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_segments = 1',
        'configs.TrainConfig.warmup_steps = 1', 'configs.DataConfig.batch_size = 2', *MESH]


def train_tiny_run(workdir: pathlib.Path) -> pathlib.Path:
  """One tiny 2-step run with checkpoints at steps 1 and 2 (vocab_size 260): conftest.py's `trained_run`."""
  assert train_main(TINY + [f'--gin_param={p}' for p in FAST] + [f'--workdir={workdir}']) == 0
  return workdir


_TRAINED = []  # the trained run's path, for normalise


class Ctx:
  """What a case builds its bad input with: a private folder, and the trained run (or a copy of it)."""

  def __init__(self, tmp: pathlib.Path, request, monkeypatch=None):
    self.tmp, self._request, self.monkeypatch = tmp, request, monkeypatch

  @property
  def trained(self) -> pathlib.Path:
    run = self._request.getfixturevalue('trained_run')
    if run not in _TRAINED:
      _TRAINED.append(run)
    return run

  def train(self, *flags) -> list[str]:
    """brt-train's flags for the tiny experiment in a fresh workdir, and `flags`."""
    return TINY + [f'--workdir={self.tmp}/w', *flags]

  def copy(self) -> pathlib.Path:
    run = self.tmp / 'run'
    if not run.exists():
      shutil.copytree(self.trained, run)
    return run

  def file(self, name: str, data) -> pathlib.Path:
    path = self.tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path

  def texts(self, name='texts', **files) -> pathlib.Path:
    for file, text in (files or {'a.txt': 'A short document.\n'}).items():
      self.file(f'{name}/{file}', text)
    return self.tmp / name

  def pg19(self, splits=('train', 'validation', 'test'), metadata='1,A book,1900,x\n', books=('1',)):
    root = self.tmp / 'pg19'
    for split in splits:
      (root / split).mkdir(parents=True)
      for book in books:
        (root / split / f'{book}.txt').write_text('Once upon a time.\n')
    if metadata is not None:
      (root / 'metadata.csv').write_text(metadata)
    return root

  def truncate(self, run: pathlib.Path, step: int) -> pathlib.Path:
    """Cuts every array file of a checkpoint to 100 bytes, as a full disk or a killed copy leaves it."""
    for f in (run / 'checkpoints' / str(step) / 'state').rglob('*'):
      if f.is_file() and f.stat().st_size > 1000:
        f.write_bytes(f.read_bytes()[:100])
    return run

  def pg19_unprepared(self):
    self.monkeypatch.setenv('TFDS_DATA_DIR', str(self.tmp / 'tfds'))
    tasks._REGISTERED.pop('pg19_bytes', None)  # pylint: disable=protected-access  (re-register against it)


class Case(NamedTuple):
  id: str
  category: str
  what: str  # the bad input, in words (the doc's second column)
  prog: str
  argv: Callable[[Ctx], list[str]]
  status: int
  fragment: str
  usage: bool = False  # argparse's error: its usage line comes first


def _gin(ctx, text, name='bad.gin'):
  return [f'--gin_file={ctx.file(name, text)}', '--gin_file=task/pg_mini_bytes.gin', f'--workdir={ctx.tmp}/w']


def _param(*params):
  return lambda ctx: TINY + [f'--gin_param={p}' for p in params] + [f'--workdir={ctx.tmp}/w']


HEAD = 'from __gin__ import dynamic_registration\nfrom block_recurrent import configs\n'
TOKENS = ['--task=pg_mini_tokens']
LATIN1 = b'caf\xe9'  # 'café' in Latin-1: byte 3 is not UTF-8
OTHER_BOOK = '2,Other,1900,x\n'

CASES = [
    # gin files and bindings
    Case('gin-missing-file', 'gin', '--gin_file names a file that does not exist', 'brt-train',
         lambda c: ['--gin_file=experiments/tiny/nope.gin', f'--workdir={c.tmp}/w'], 2,
         "gin file 'experiments/tiny/nope.gin' not found"),
    Case('gin-missing-include', 'gin', "a gin file includes a file that does not exist", 'brt-train',
         lambda c: _gin(c, "include 'size/huge.gin'\n"), 2, "gin file 'size/huge.gin' included by"),
    Case('gin-include-cycle', 'gin', 'a gin file includes itself', 'brt-train',
         lambda c: _gin(c, f"include '{c.tmp}/bad.gin'\n"), 2, 'includes itself'),
    Case('gin-syntax-error', 'gin', 'a gin file with `num_layers = = 3`', 'brt-train',
         lambda c: _gin(c, HEAD + 'configs.ModelConfig.num_layers = = 3\n'), 2, 'bad gin syntax in'),
    Case('gin-not-utf8', 'gin', 'a gin file that is binary, not text', 'brt-train',
         lambda c: _gin(c, b'\xff\xfe\x00binary'), 2, 'is not UTF-8 text'),
    Case('gin-param-syntax', 'gin', '--gin_param without `= value`', 'brt-train',
         _param('configs.ModelConfig.num_layers'), 2, "bad gin syntax in --gin_param"),
    Case('gin-unknown-field', 'gin', 'a misspelt field, `configs.ModelConfig.num_layerz`', 'brt-train',
         _param('configs.ModelConfig.num_layerz = 3'), 2, "did you mean 'num_layers'?"),
    Case('gin-unknown-class', 'gin', 'a binding of a class that is not a config, `configs.Optimizer.lr`',
         'brt-train', _param('configs.Optimizer.lr = 0.1'), 2, 'is not a configuration field'),
    Case('gin-wrong-type', 'gin', "a string where a number goes, `learning_rate = 'fast'`", 'brt-train',
         _param("configs.TrainConfig.learning_rate = 'fast'"), 2, "must be a number, got 'fast'"),
    Case('gin-int-for-bool', 'gin', 'an integer where a boolean goes, `use_xl_cache = 1`', 'brt-train',
         _param('configs.ModelConfig.use_xl_cache = 1'), 2, 'must be True or False, got 1'),
    Case('gin-negative-layers', 'gin', '`num_layers = -1`', 'brt-train', _param('configs.ModelConfig.num_layers = -1'),
         2, 'ModelConfig.num_layers must be a positive integer, got -1'),
    Case('gin-window-not-dividing', 'gin', 'a segment of 30 tokens with a window of 8', 'brt-train',
         _param('configs.ModelConfig.segment_length = 30'), 2, 'segment_length 30 is not a multiple of window 8'),
    Case('gin-zero-batch', 'gin', '`DataConfig.batch_size = 0`', 'brt-train', _param('configs.DataConfig.batch_size = 0'),
         2, 'DataConfig.batch_size must be a positive integer, got 0'),
    Case('gin-conflicting-includes', 'gin', 'one gin file includes both size/tiny.gin (via an experiment) and '
         'size/small.gin', 'brt-train',
         lambda c: _gin(c, "include 'experiments/tiny/xl.gin'\ninclude 'size/small.gin'\n"), 2,
         'conflicting gin bindings for configs.ModelConfig.'),
    Case('gin-missing-task', 'gin', 'an experiment without a gin/task/ file', 'brt-train',
         lambda c: ['--gin_file=experiments/tiny/rec_fixed_skip.gin', f'--workdir={c.tmp}/w'], 2,
         'DataConfig.task is required'),
    Case('gin-import-code', 'gin', 'a gin file with `import os`', 'brt-train',
         lambda c: _gin(c, HEAD + "import os\nos.system.command = 'touch pwned'\n"), 2, 'imports os'),
    Case('gin-call-reference', 'gin', '`num_layers = @os.system()` (a reference gin would call)', 'brt-train',
         _param('configs.ModelConfig.num_layers = @os.system()'), 2, 'a reference gin would call'),
    Case('gin-undefined-macro', 'gin', '`num_layers = %NOPE` with no `NOPE = ...`', 'brt-train',
         _param('configs.ModelConfig.num_layers = %NOPE'), 2, 'uses the macro %NOPE, which no gin file defines'),
    # data folders and files
    Case('data-unknown-task', 'data', "`DataConfig.task = 'wiki_bytes'`", 'brt-train',
         _param("configs.DataConfig.task = 'wiki_bytes'"), 2, "unknown task 'wiki_bytes'"),
    Case('data-task-without-kind', 'data', '`brt-eval --task=pg19` (no _bytes or _tokens)', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--task=pg19'], 2, 'must be <corpus>_bytes or <corpus>_tokens'),
    Case('data-folder-required', 'data', 'task text_folder_bytes without a data_dir', 'brt-train',
         _param("configs.DataConfig.task = 'text_folder_bytes'"), 2, 'needs a folder: set configs.DataConfig.data_dir'),
    Case('data-missing-folder', 'data', 'data_dir names a folder that does not exist', 'brt-train',
         lambda c: _param("configs.DataConfig.task = 'text_folder_bytes'",
                          f"configs.DataConfig.data_dir = '{c.tmp}/nowhere'")(c), 2, 'does not exist'),
    Case('data-empty-folder', 'data', '`brt-vocab --task=text_folder` on an empty folder', 'brt-vocab',
         lambda c: (c.tmp / 'empty').mkdir() or ['--task=text_folder', f'--data_dir={c.tmp}/empty',
                                                  f'--output={c.tmp}/out/v'], 2, 'holds no files'),
    Case('data-no-papers', 'data', '`brt-vocab --task=arxiv` on a folder with no paper sub-folders', 'brt-vocab',
         lambda c: ['--task=arxiv', f'--data_dir={c.texts()}', f'--output={c.tmp}/out/v'], 2, 'holds no papers'),
    Case('data-pg19-no-metadata', 'data', 'a PG19 folder without metadata.csv', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--task=pg19_bytes', f'--data_dir={c.pg19(metadata=None)}'], 2,
         'metadata.csv is missing'),
    Case('data-missing-split', 'data', 'a PG19 folder without its test/ split, scored on test', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--task=pg19_bytes', '--split=test',
                    f'--data_dir={c.pg19(splits=("train", "validation"))}'], 2, 'test does not exist'),
    Case('data-no-books', 'data', 'a PG19 folder whose validation/ holds no books', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--task=pg19_bytes', f'--data_dir={c.pg19(books=())}'], 2,
         'holds no <id>.txt or <id>.txt.xz books'),
    Case('data-book-not-in-metadata', 'data', 'a PG19 book with no row in metadata.csv', 'brt-vocab',
         lambda c: ['--task=pg19', f'--data_dir={c.pg19(metadata=OTHER_BOOK)}', f'--output={c.tmp}/out/v'],
         2, 'has no row in'),
    Case('data-not-utf8', 'data', 'a Latin-1 file in a text folder, for a token vocabulary', 'brt-vocab',
         lambda c: ['--task=text_folder', f'--data_dir={c.texts(**{"a.txt": LATIN1})}', f'--output={c.tmp}/out/v'],
         2, 'is not valid UTF-8 (byte 3)'),
    Case('data-pg19-not-prepared', 'data', '`brt-vocab --task=pg19` with no data_dir and no prepared TFDS pg19',
         'brt-vocab', lambda c: c.pg19_unprepared() or ['--task=pg19', f'--output={c.tmp}/out/v'], 2,
         'PG19 is not prepared'),
    # vocabularies
    Case('vocab-missing-model', 'vocab', '--spm_path names a file that does not exist', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', *TOKENS, f'--spm_path={c.tmp}/nope.model'], 2,
         'SentencePiece model'),
    Case('vocab-not-a-model', 'vocab', '--spm_path names a text file', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', *TOKENS, f'--spm_path={c.file("v.model", "hello")}'], 2,
         'is not a SentencePiece model'),
    Case('vocab-larger-than-model', 'vocab', 'the 8000-piece PG-mini vocabulary on a 260-id byte model',
         'brt-eval', lambda c: [f'--workdir={c.trained}', *TOKENS], 2,
         'has 8000 token ids but the model has vocab_size 260'),
    Case('vocab-size-too-small', 'vocab', '`brt-vocab --vocab_size=100`', 'brt-vocab',
         lambda c: ['--vocab_size=100', f'--output={c.tmp}/v'], 2, '--vocab_size 100 is too small'),
    Case('vocab-size-too-large', 'vocab', '`brt-vocab --vocab_size=5000` on a one-sentence corpus', 'brt-vocab',
         lambda c: ['--task=text_folder', f'--data_dir={c.texts()}', '--vocab_size=5000', f'--output={c.tmp}/v'],
         2, 'SentencePiece training failed'),
    Case('vocab-unknown-corpus', 'vocab', '`brt-vocab --task=wiki`', 'brt-vocab',
         lambda c: ['--task=wiki', f'--output={c.tmp}/v'], 2, "--task 'wiki' is not a corpus"),
    Case('vocab-output-under-file', 'vocab', '`brt-vocab --output` under a file', 'brt-vocab',
         lambda c: [f'--output={c.file("f", "x")}/v'], 2, 'cannot create the folder of --output'),
    Case('vocab-output-is-folder', 'vocab', '`brt-vocab --output` names a folder', 'brt-vocab',
         lambda c: [f'--output={c.tmp}'], 2, 'is a folder: give a file prefix'),
    Case('vocab-bad-flag', 'vocab', '`brt-vocab --vocab_size=lots`', 'brt-vocab',
         lambda c: ['--vocab_size=lots', f'--output={c.tmp}/v'], 2, "invalid int value: 'lots'", usage=True),
    # checkpoints
    Case('ckpt-not-a-workdir', 'checkpoint', '--workdir names a folder that does not exist', 'brt-eval',
         lambda c: [f'--workdir={c.tmp}/nowhere'], 2, 'config.gin not found: --workdir must be a folder brt-train wrote'),
    Case('ckpt-none-saved', 'checkpoint', 'a workdir with config.gin but no checkpoint', 'brt-generate',
         lambda c: shutil.rmtree(c.copy() / 'checkpoints') or [f'--workdir={c.tmp}/run'], 2,
         'has no checkpoint: train it first'),
    Case('ckpt-other-config', 'checkpoint', 'brt-eval with `d_model = 48` on a d_model=32 run', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--gin_param=configs.ModelConfig.d_model = 48'], 2,
         'does not fit this config'),
    Case('ckpt-resume-other-config', 'checkpoint', 'brt-train resuming a 3-layer run with 4 layers', 'brt-train',
         lambda c: TINY + [f'--gin_param={p}' for p in FAST + ['configs.ModelConfig.num_layers = 4']]
         + [f'--workdir={c.copy()}'], 2, 'does not fit this config'),
    Case('ckpt-newest-truncated', 'checkpoint', 'the newest checkpoint truncated: brt-eval falls back to the '
         'previous one (a warning, then the scores)', 'brt-eval',
         lambda c: [f'--workdir={c.truncate(c.copy(), 2)}', '--task=text_folder_bytes', f'--data_dir={c.texts()}'],
         0, 'is incomplete, corrupted or unreadable'),
    Case('ckpt-all-truncated', 'checkpoint', 'every checkpoint truncated', 'brt-eval',
         lambda c: [f'--workdir={c.truncate(c.truncate(c.copy(), 2), 1)}'], 2, 'can be read'),
    Case('ckpt-step-truncated', 'checkpoint', '--step names a truncated checkpoint', 'brt-generate',
         lambda c: [f'--workdir={c.truncate(c.copy(), 2)}', '--step=2'], 2, 'cannot be read'),
    Case('ckpt-step-missing', 'checkpoint', '`--step=7` on a run with steps 1 and 2', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--step=7'], 2, 'has no checkpoint at step 7 (it has 1, 2)'),
    Case('ckpt-load-dir-nowhere', 'checkpoint', '--load_dir names a folder that does not exist', 'brt-train',
         lambda c: _param()(c) + [f'--load_dir={c.tmp}/nowhere'], 2, 'has no checkpoints folder'),
    Case('ckpt-config-gin-corrupt', 'checkpoint', "a workdir's config.gin overwritten with junk", 'brt-eval',
         lambda c: (c.copy() / 'config.gin').write_text('configs.ModelConfig.d_model = = ]\n') and
         [f'--workdir={c.tmp}/run'], 2, 'bad gin syntax in'),
    Case('ckpt-config-gin-code', 'checkpoint', "a workdir's config.gin edited to `import os`", 'brt-eval',
         lambda c: (c.copy() / 'config.gin').write_text(HEAD + 'import os\n') and [f'--workdir={c.tmp}/run'], 2,
         'imports os'),
    # command-line flags
    Case('cli-missing-workdir', 'cli', 'brt-train without --workdir', 'brt-train', lambda c: TINY, 2,
         'the following arguments are required: --workdir', usage=True),
    Case('cli-unknown-flag', 'cli', '`brt-info --gin_flie=x.gin` (a misspelt flag)', 'brt-info',
         lambda c: ['--gin_flie=x.gin'], 2, 'unrecognized arguments: --gin_flie=x.gin', usage=True),
    Case('cli-bad-int', 'cli', '`--max_new_tokens=ten`', 'brt-generate',
         lambda c: [f'--workdir={c.tmp}', '--max_new_tokens=ten'], 2, "invalid int value: 'ten'", usage=True),
    Case('cli-negative-max-new-tokens', 'cli', '`--max_new_tokens=-1`', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', '--max_new_tokens=-1'], 2, '--max_new_tokens must be >= 0, got -1'),
    Case('cli-negative-temperature', 'cli', '`--temperature=-0.5`', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', '--temperature=-0.5'], 2, '--temperature must be a number >= 0'),
    Case('cli-nan-temperature', 'cli', '`--temperature=nan`', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', '--temperature=nan'], 2, 'got nan'),
    Case('cli-top-p-out-of-range', 'cli', '`--top_p=1.5`', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', '--top_p=1.5'], 2, '--top_p must lie in (0, 1]'),
    Case('cli-negative-top-k', 'cli', '`--top_k=-3`', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', '--top_k=-3'], 2, '--top_k must be >= 0'),
    Case('cli-prompt-and-file', 'cli', '--prompt and --prompt_file together', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', '--prompt=a', f'--prompt_file={c.file("p.txt", "b")}'], 2,
         'give --prompt or --prompt_file, not both'),
    Case('cli-unreadable-prompt-file', 'cli', '--prompt_file names a file that does not exist', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', f'--prompt_file={c.tmp}/nope.txt'], 2,
         'cannot read --prompt_file'),
    Case('cli-prompt-file-not-utf8', 'cli', '--prompt_file in Latin-1', 'brt-generate',
         lambda c: [f'--workdir={c.trained}', f'--prompt_file={c.file("p.txt", LATIN1)}'], 2,
         'is not UTF-8 (byte 3)'),
    Case('cli-bad-split', 'cli', '`brt-eval --split=dev`', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--split=dev'], 2, "--split 'dev': use train, validation or test"),
    Case('cli-negative-step', 'cli', '`brt-eval --step=-1`', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--step=-1'], 2, '--step -1: give the step of a saved checkpoint'),
    Case('cli-unwritable-workdir', 'cli', '--workdir under a file', 'brt-train',
         lambda c: _param()(c)[:-1] + [f'--workdir={c.file("f", "x")}/w'], 2, 'cannot write to workdir'),
    Case('cli-unwritable-losses-file', 'cli', '--losses_file in a folder that does not exist', 'brt-eval',
         lambda c: [f'--workdir={c.trained}', '--task=text_folder_bytes', f'--data_dir={c.texts()}',
                    f'--losses_file={c.tmp}/no/such/losses.tsv'], 2, 'cannot write --losses_file'),
    Case('cli-partial-multiprocess', 'cli', '--num_processes=2 without --coordinator_address and --process_id',
         'brt-train', lambda c: _param()(c) + ['--num_processes=2'], 2,
         'needs all of --coordinator_address, --num_processes and --process_id'),
    Case('cli-process-id-out-of-range', 'cli', '`--process_id=2` with `--num_processes=2`', 'brt-train',
         lambda c: _param()(c) + ['--coordinator_address=localhost:1234', '--num_processes=2', '--process_id=2'], 2,
         '--process_id 2 must lie in [0, --num_processes=2)'),
    Case('cli-distributed-and-explicit', 'cli', '--distributed together with --num_processes', 'brt-train',
         lambda c: _param()(c) + ['--distributed', '--num_processes=2'], 2, '--distributed finds the cluster itself'),
    Case('cli-reset-optimizer-alone', 'cli', '--reset_optimizer without --load_dir', 'brt-train',
         lambda c: _param()(c) + ['--reset_optimizer'], 2, '--reset_optimizer applies to the parameters --load_dir'),
    Case('cli-info-negative-devices', 'cli', '`brt-info --devices=-1`', 'brt-info',
         lambda c: ['--gin_file=experiments/tiny/rec_fixed_skip.gin', '--devices=-1'], 2, '--devices -1'),
    Case('cli-info-zero-memory', 'cli', '`brt-info --layer_costs --memory 0`', 'brt-info',
         lambda c: ['--layer_costs', '--memory', '0'], 2, 'every GTrXL memory must be >= 1'),
    Case('cli-info-mesh-mismatch', 'cli', '`brt-info --devices=3` with an fsdp axis of 2', 'brt-info',
         lambda c: ['--gin_file=experiments/tiny/rec_fixed_skip.gin', '--devices=3',
                    '--gin_param=configs.MeshConfig.fsdp = 2'], 2, 'does not use the 3 devices'),
    Case('cli-batch-does-not-split', 'cli', '`DataConfig.batch_size = 3` on 8 devices, data parallel', 'brt-train',
         _param('configs.DataConfig.batch_size = 3'), 2,
         "DataConfig.batch_size 3 cannot be split evenly over the mesh's batch axes data=8 x fsdp=1 (8 ways): "
         'use 8 rows'),
    Case('cli-info-batch-does-not-split', 'cli', '`brt-info --devices=16 --batch_size=12` with FSDP', 'brt-info',
         lambda c: ['--gin_file=experiments/tiny/rec_fixed_skip.gin', '--gin_file=mesh/fsdp.gin', '--devices=16',
                    '--batch_size=12'], 2, "batch size 12 cannot be split evenly over the mesh's batch axes "
                                           'data=1 x fsdp=16 (16 ways): use 16 rows'),
]


def of(prog: str) -> list[Case]:
  """The cases of one program, in the table's order."""
  return [c for c in CASES if c.prog == prog]


def ids(cases: list) -> list[str]:
  return [c.id for c in cases]


def command_tests(prog: str):
  """The two tests every command's file (tests/cli/test_<command>.py) runs, over that program's cases of
  this table and of tests/flag_values.py; a file binds them to module names starting with test_."""
  import flag_values  # pylint: disable=import-outside-toplevel  (flag_values imports this module)
  bad, flags = of(prog), flag_values.of(prog)

  @pytest.mark.parametrize('case', bad, ids=ids(bad))
  def test_bad_input_is_one_clear_line(case, tmp_path, request, monkeypatch, capsys, caplog):
    check(case, tmp_path, request, monkeypatch, capsys, caplog)

  @pytest.mark.parametrize('case', flags, ids=ids(flags))
  def test_bad_flag_value_is_one_line_and_exit_2(case, tmp_path, request, monkeypatch, capsys):
    flag_values.check(case, tmp_path, request, monkeypatch, capsys)

  return test_bad_input_is_one_clear_line, test_bad_flag_value_is_one_line_and_exit_2


def normalise(text: str, tmp: pathlib.Path) -> str:
  """Paths as the doc shows them: <workdir> for the trained run, <tmp> for the case's folder, <repo>."""
  for path, name in [(p, '<workdir>') for p in _TRAINED] + [(tmp, '<tmp>'), (REPO, '<repo>')]:
    text = text.replace(str(path), name)
  return text


def check(case: Case, tmp_path, request, monkeypatch, capsys, caplog) -> None:
  """Runs the case's program on its bad input: one clear line and its status (or, for status 0, the one
  warning and the scores), never a traceback."""
  ctx = Ctx(tmp_path, request, monkeypatch)
  argv = case.argv(ctx)
  capsys.readouterr()
  try:
    status = PROGRAMS[case.prog](argv)
  except SystemExit as e:  # argparse
    status = e.code
  out, err = capsys.readouterr()
  lines = err.splitlines()
  assert status == case.status, err
  if case.status == 0:  # a fallback: the warning is logged and the command does its work
    assert not err and 'bits per byte:' in out
    warnings = [f'{r.levelname}:{r.name}:{r.getMessage()}' for r in caplog.records  # as logging prints it
                if r.levelname == 'WARNING' and case.fragment in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    message = warnings[0]
  else:
    assert lines and lines[-1].startswith(f'{case.prog}: error: '), err
    if case.usage:
      assert lines[0].startswith('usage: ') and all(l.startswith(('usage: ', ' ')) for l in lines[:-1]), err
    else:
      assert len(lines) == 1, err
    message = lines[-1]
    assert case.fragment in message
  assert 'Traceback' not in err
  doc_tables.record(case.id, case.category, case.what, case.status, normalise(message, ctx.tmp))


def doc_rows() -> dict[str, str]:
  return doc_tables.rows('## Bad inputs tried')
