"""The data side of resuming and of reading folders, through brt-train where a user meets it: a resume on
other data or other stream settings is refused with one line naming what differs (exit 2), and a data
folder's entries that cannot be read are named instead of skipped. Rows for docs/reliability.md:
BRT_RELIABILITY_TABLE=rows.md pytest tests/data/test_data_reliability.py."""

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from typing import Callable, NamedTuple

import numpy as np
import pytest

from helpers import MESH

import doc_tables

from block_recurrent import configs
from block_recurrent.data import segments
from block_recurrent.cli.train import main as train_main
from block_recurrent.train import stream

# Orbax leaves the reads of a checkpoint's arrays as coroutines that are collected later.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')

TINY = ['--gin_file=experiments/tiny/rec_fixed_skip.gin', '--gin_file=task/text_folder_bytes.gin']
FAST = ['configs.TrainConfig.num_steps = 2', 'configs.TrainConfig.checkpoint_every = 1',
        'configs.TrainConfig.log_every = 1', 'configs.TrainConfig.eval_segments = 1',
        'configs.TrainConfig.warmup_steps = 1', 'configs.DataConfig.batch_size = 2', *MESH]
# Two documents: a folder of fewer than three is not split, so validation reads them too. After 2 steps of
# 32 tokens both lanes are in the middle of one.
TEXTS = {'a.txt': 'It was the best of times, it was the worst of times. ' * 12,
         'b.txt': 'Call me Ishmael. Some years ago, never mind how long precisely. ' * 10}
ROOT = os.geteuid() == 0  # reads anything: chmod 000 cannot make a file unreadable


def _write(folder: pathlib.Path, files: dict) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in files.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
  return folder


def _argv(workdir, data_dir, *params) -> list[str]:
  params = (*FAST, f"configs.DataConfig.data_dir = '{data_dir}'", *params)
  return TINY + [f'--gin_param={p}' for p in params] + [f'--workdir={workdir}']


@pytest.fixture(scope='module')
def texts(tmp_path_factory) -> pathlib.Path:
  return _write(tmp_path_factory.mktemp('data') / 'texts', TEXTS)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, texts) -> pathlib.Path:
  """One tiny 2-step run on `texts`, with checkpoints at steps 1 and 2; refused resumes leave it as it is."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  assert train_main(_argv(workdir, texts)) == 0
  return workdir


@pytest.fixture
def folder(texts):
  """The trained run's data folder, for a case to change; put back as it was afterwards."""
  yield texts
  shutil.rmtree(texts)
  _write(texts, TEXTS)


class Case(NamedTuple):
  id: str
  what: str  # the bad input, in words (the doc's second column)
  argv: Callable  # (trained workdir, its data folder, the case's tmp folder) -> brt-train's argv
  fragment: str


def _edit(folder, name, text):
  (folder / name).write_text(text)
  return folder


def _same_length_edit(folder):
  text = TEXTS['a.txt']
  return _edit(folder, 'a.txt', text[:-2] + '!\n')


def _rename(folder, old, new):
  (folder / old).rename(folder / new)
  return folder


RESUME = [
    Case('data-resume-other-seed', 'resume with `DataConfig.shuffle_seed = 1`, trained with 0',
         lambda w, f, t: _argv(w, f, 'configs.DataConfig.shuffle_seed = 1'),
         'DataConfig.shuffle_seed was 0 in the checkpoint, now 1: resume with the same value '
         '(--gin_param=configs.DataConfig.shuffle_seed=0) or start a new --workdir'),
    Case('data-resume-other-task', 'resume with `DataConfig.task = \'pg_mini_bytes\'`, trained on a text folder',
         lambda w, f, t: TINY + ['--gin_file=task/pg_mini_bytes.gin'] + [f'--gin_param={p}' for p in FAST]
         + [f'--workdir={w}'],
         "DataConfig.task was 'text_folder_bytes' in the checkpoint, now 'pg_mini_bytes'"),
    Case('data-resume-renamed-file', "resume after a file of the data folder was renamed (b.txt to c.txt)",
         lambda w, f, t: _argv(w, _rename(f, 'b.txt', 'c.txt')),
         f"changed since the checkpoint: document 1 was 'b.txt' ({len(TEXTS['b.txt'])} bytes), now 'c.txt' "
         f"({len(TEXTS['b.txt'])} bytes): resume with the data it was trained on, or start a new --workdir"),
    Case('data-resume-edited-file', 'resume after a file of the data folder was edited, its size unchanged',
         lambda w, f, t: _argv(w, _same_length_edit(f)),
         'changed since the checkpoint: the text of a document changed (fingerprint '),
    Case('data-resume-grown-file', 'resume after text was added to a file of the data folder',
         lambda w, f, t: _argv(w, _edit(f, 'a.txt', TEXTS['a.txt'] + 'More.\n')),
         f"changed since the checkpoint: document 0 ('a.txt') had {len(TEXTS['a.txt'])} bytes, now "
         f"{len(TEXTS['a.txt']) + 6}"),
    Case('data-resume-removed-file', 'resume after a file of the data folder was deleted',
         lambda w, f, t: _argv(w, (f / 'b.txt').unlink() or f),
         f"changed since the checkpoint: document 1 was 'b.txt' ({len(TEXTS['b.txt'])} bytes), now there is none"),
    Case('data-resume-other-folder', 'resume with data_dir set to another folder of other files',
         lambda w, f, t: _argv(w, _write(t / 'other', {'c.txt': 'Other text. ' * 60})),
         "DataConfig.data_dir was '<tmp>/texts' in the checkpoint, now '<tmp>/other', and its documents differ: "
         'resume with the data it was trained on, or start a new --workdir'),
]


def _link(folder, name, target):
  (folder / name).symlink_to(target)
  return folder


def _no_permission(path):
  path.chmod(0)
  return path


FOLDERS = [
    Case('data-folder-is-a-file', 'data_dir names a file, not a folder',
         lambda w, f, t: _argv(t / 'w', _write(t / 'texts', TEXTS) / 'a.txt'),
         'data folder <tmp>/texts/a.txt is a file, not a folder: give the folder that holds the data; '
         'expected a folder of UTF-8 text files (any depth)'),
    Case('data-broken-link', 'a data folder holds a symbolic link to a file that does not exist',
         lambda w, f, t: _argv(t / 'w', _link(_write(t / 'texts', TEXTS), 'c.txt', 'gone.txt')),
         '<tmp>/texts/c.txt is a symbolic link to gone.txt, which does not exist: fix the link or remove it '
         'from the data folder'),
    Case('data-link-loop', 'a data folder holds a symbolic link to itself',
         lambda w, f, t: _argv(t / 'w', _link(_write(t / 'texts', TEXTS), 'c.txt', 'c.txt')),
         'cannot read <tmp>/texts/c.txt (Too many levels of symbolic links): make it readable or move it out '
         'of the data folder'),
    Case('data-unreadable-file', 'a data folder holds a file its user may not read (chmod 000)',
         lambda w, f, t: _argv(t / 'w', _no_permission(_write(t / 'texts', TEXTS) / 'b.txt').parent),
         'cannot read <tmp>/texts/b.txt (Permission denied): make it readable or move it out of the data folder'),
]


def _normalise(text: str, paths: dict) -> str:
  for path, name in paths.items():
    text = text.replace(str(path), name)
  return text


def _refused(case: Case, argv: list[str], capsys, paths: dict) -> str:
  """Runs brt-train; it must exit 2 with one line, `brt-train: error: ...`, holding the case's fragment."""
  capsys.readouterr()
  try:
    status = train_main(argv)
  except SystemExit as e:
    status = e.code
  err = capsys.readouterr().err
  lines = err.splitlines()
  assert status == 2, err
  assert len(lines) == 1 and lines[0].startswith('brt-train: error: '), err
  message = _normalise(lines[0], paths)
  assert case.fragment in message, message
  doc_tables.record(case.id, 'data', case.what, 2, message)
  return message


@pytest.mark.parametrize('case', RESUME, ids=[c.id for c in RESUME])
def test_resume_on_other_data_or_settings_names_what_differs(case, trained, folder, tmp_path, capsys):
  before = sorted(p.name for p in (trained / 'checkpoints').iterdir())
  config = (trained / 'config.gin').read_text()
  _refused(case, case.argv(trained, folder, tmp_path), capsys,
           {trained: '<workdir>', folder.parent: '<tmp>', tmp_path: '<tmp>'})
  # Refused before anything is written: the run resumes as it was once the data is put back.
  assert sorted(p.name for p in (trained / 'checkpoints').iterdir()) == before
  assert (trained / 'config.gin').read_text() == config


# Root reads any file: as root the unreadable-file case runs its read as nobody (test_unreadable_file_is_named).
@pytest.mark.parametrize('case', [c for c in FOLDERS if not (ROOT and 'unreadable' in c.id)],
                         ids=lambda c: c.id)
def test_data_folder_that_cannot_be_read_is_named(case, tmp_path, capsys):
  _refused(case, case.argv(None, None, tmp_path), capsys, {tmp_path: '<tmp>'})


def test_unreadable_file_is_named():
  """chmod 000 on a file and on a sub-folder, read by a user that is not root (a child process that drops
  to nobody when the tests run as root)."""
  top = pathlib.Path(tempfile.mkdtemp(prefix='brt-unreadable-'))
  try:
    top.chmod(0o755)
    for bad, message in [('b.txt', f'cannot read {top}/texts/b.txt (Permission denied)'),
                         ('sub', f'cannot read {top}/texts/sub (Permission denied)')]:
      folder = _write(top / 'texts', {**TEXTS, 'sub/c.txt': 'More text.\n'} if bad == 'sub' else TEXTS)
      folder.chmod(0o755)
      for path in folder.rglob('*'):
        path.chmod(0o755 if path.is_dir() else 0o644)
      (folder / bad).chmod(0)
      # Imports first: Python's own files may lie where nobody cannot read them.
      code = ('import os, sys\n'
              'from block_recurrent.configs import ConfigError\n'
              'from block_recurrent.data import corpus\n'
              'if os.geteuid() == 0:\n  os.setgid(65534); os.setuid(65534)\n'
              'try:\n  corpus.text_folder(sys.argv[1])\nexcept ConfigError as e:\n  print(e)\n')
      out = subprocess.run([sys.executable, '-c', code, str(folder)], capture_output=True, text=True,
                           check=True, cwd=pathlib.Path(__file__).resolve().parents[2]).stdout
      assert out.startswith(message) and out.endswith('make it readable or move it out of the data folder\n'), out
      (folder / bad).chmod(0o755)
      shutil.rmtree(folder)
  finally:
    shutil.rmtree(top, ignore_errors=True)


def test_doc_table_lists_every_case():
  rows = doc_tables.rows('### Training data')
  assert sorted(rows) == sorted(c.id for c in RESUME + FOLDERS)
  for case in RESUME + FOLDERS:
    assert case.fragment.replace('<tmp>', '') .split('<')[0][:60] in rows[case.id].replace('<tmp>', ''), case.id


# --- the stream's cursor, without training --------------------------------------------------------------

def _data(folder, **kwargs) -> configs.DataConfig:
  return configs.DataConfig(task='text_folder_bytes', data_dir=str(folder), batch_size=2, **kwargs)


def _next(batchers: dict, steps: int) -> list:
  return [[next(b) for b in batchers.values()] for _ in range(steps)]


def _same(a: list, b: list) -> None:
  assert len(a) == len(b)
  for step_a, step_b in zip(a, b):
    for x, y in zip(step_a, step_b):
      np.testing.assert_array_equal(x.targets, y.targets)
      np.testing.assert_array_equal(x.doc_ids, y.doc_ids)


def test_moved_folder_with_the_same_documents_resumes_exactly(tmp_path):
  first = _write(tmp_path / 'first', TEXTS)
  batchers = stream.train_batchers(_data(first), 32, None)
  _next(batchers, 3)
  cursor = json.loads(json.dumps(stream.cursor(batchers)))
  expected = _next(batchers, 5)
  moved = shutil.copytree(first, tmp_path / 'moved')
  _same(_next(stream.train_batchers(_data(moved), 32, cursor), 5), expected)


def test_other_batch_size_or_segment_length_is_named(tmp_path):
  data = _write(tmp_path / 'texts', TEXTS)
  batchers = stream.train_batchers(_data(data), 32, None)
  _next(batchers, 1)
  cursor = stream.cursor(batchers)
  with pytest.raises(configs.ConfigError, match=r'^DataConfig.batch_size was 2 in the checkpoint, now 4: resume '
                     r'with the same value \(--gin_param=configs.DataConfig.batch_size=2\) or start a new '
                     r'--workdir$'):
    stream.train_batchers(dataclasses.replace(_data(data), batch_size=4), 32, cursor)
  with pytest.raises(configs.ConfigError, match='^ModelConfig.segment_length was 32 in the checkpoint, now 64: '):
    stream.train_batchers(_data(data), 64, cursor)


def test_cursor_written_before_fingerprints_restores_with_a_warning(tmp_path, caplog):
  data = _write(tmp_path / 'texts', TEXTS)
  batchers = stream.train_batchers(_data(data), 32, None)
  _next(batchers, 3)
  cursor = json.loads(json.dumps(stream.cursor(batchers)))
  expected = _next(batchers, 5)
  for shard in cursor['shards'].values():  # as checkpoints written before this change hold them
    del shard['source'], shard['lane_documents']
  old = stream.sharded_cursor(cursor['shards']['0'])  # and before data shards
  _same(_next(stream.train_batchers(_data(data), 32, old), 5), expected)
  assert 'holds no fingerprint of its documents' in caplog.text
  # Without a fingerprint a changed folder goes unnoticed (hence the warning), but the settings are still
  # read from the batcher's own record.
  with pytest.raises(configs.ConfigError, match='^DataConfig.shuffle_seed was 0 in the checkpoint, now 3: '):
    stream.train_batchers(_data(data, shuffle_seed=3), 32, old)


def test_batcher_names_the_document_a_lane_was_streaming():
  def docs(*names_lengths):
    return [segments.Document(tokens=np.full(n, 5, np.int32), num_bytes=np.ones(n, np.int32), doc_id=i, name=name)
            for i, (name, n) in enumerate(names_lengths)]
  batcher = segments.DocumentBatcher(docs(('a', 10), ('b', 12)), batch_size=2, segment_length=4)
  next(batcher)
  state = json.loads(json.dumps(batcher.state()))
  assert state['lane_documents'] == [['a', 10], ['b', 12]]
  fresh = lambda *d: segments.DocumentBatcher(docs(*d), batch_size=2, segment_length=4)
  with pytest.raises(configs.ConfigError, match=r"^cursor document 1 was 'b' \(12 bytes\), now 'c' \(12 bytes\): "
                     'restore a cursor saved from the same source$'):
    fresh(('a', 10), ('c', 12)).restore(state)
  with pytest.raises(configs.ConfigError, match=r"^cursor document 0 \('a'\) had 10 bytes, now 11: "):
    fresh(('a', 11), ('b', 12)).restore(state)
  with pytest.raises(configs.ConfigError, match='^cursor was saved with shuffle_seed=None, this batcher has '
                     'shuffle_seed=1: build the batcher with the same arguments$'):
    segments.DocumentBatcher(docs(('a', 10), ('b', 12)), batch_size=2, segment_length=4,
                             shuffle_seed=1).restore(state)
  del state['lane_documents']  # an older cursor: restores, without the check
  fresh(('a', 10), ('c', 12)).restore(state)


def test_fingerprint_sees_a_rename_an_edit_and_the_order():
  def docs(*pairs):
    return [segments.Document(tokens=np.array(t, np.int32), num_bytes=np.ones(len(t), np.int32), doc_id=i, name=n)
            for i, (n, t) in enumerate(pairs)]
  base = stream.fingerprint(docs(('a', [5, 6]), ('b', [7])))
  assert base == stream.fingerprint(docs(('a', [5, 6]), ('b', [7])))
  renamed = stream.fingerprint(docs(('a', [5, 6]), ('c', [7])))
  edited = stream.fingerprint(docs(('a', [5, 8]), ('b', [7])))
  reordered = stream.fingerprint(docs(('b', [7]), ('a', [5, 6])))
  assert renamed['names'] != base['names'] and renamed['contents'] == base['contents']
  assert edited['names'] == base['names'] and edited['contents'] != base['contents']
  assert reordered['names'] != base['names'] and reordered['contents'] != base['contents']


def test_a_change_to_a_document_no_lane_holds_is_still_refused(tmp_path):
  """The lanes name their own documents; a change elsewhere is caught by the fingerprint (a PG19-layout
  folder, whose train/ split is all of its books)."""
  books = {f'{i}': f'Book {i}. ' * (30 + i) for i in range(1, 6)}

  def pg19(root, books):
    shutil.rmtree(root, ignore_errors=True)
    _write(root / 'train', {f'{b}.txt': text for b, text in books.items()})
    (root / 'metadata.csv').write_text(''.join(f'{b},Book {b},1900,x\n' for b in books))
    return root

  root = pg19(tmp_path / 'pg19', books)
  batchers = stream.train_batchers(_data(root), 32, None)
  _next(batchers, 1)
  cursor = json.loads(json.dumps(stream.cursor(batchers)))
  held = {index for index, _ in cursor['shards']['0']['lanes']}
  idle = next(b for i, b in enumerate(books) if i not in held)
  prefix = f'^the training data in folder {root} changed since the checkpoint: '
  for changed, match in [({**books, idle: books[idle].upper()}, 'the text of a document changed \\(fingerprint '),
                         ({**books, '9': 'Book 9.'}, 'it had 5 documents, now 6: '),
                         # '<idle>a' sorts where '<idle>' did: no lane's index moves
                         ({**{b: t for b, t in books.items() if b != idle}, idle + 'a': books[idle]},
                          'a document was renamed \\(names fingerprint ')]:
    pg19(root, changed)
    with pytest.raises(configs.ConfigError, match=prefix + match):
      stream.train_batchers(_data(root), 32, cursor)
  pg19(root, books)
  stream.train_batchers(_data(root), 32, cursor)
