"""Raw documents from folders on disk: the PG19 layout, plain text, LaTeX papers, source repositories.

Pure Python (no TensorFlow): each reader returns a list of `RawDocument`s whose text is read only when
asked for, in a stable order, so that a document's index is the same on every host and every run.
The seqio tasks in tasks.py wrap these; `brt-vocab` and the tests read them directly.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import lzma
import os
import pathlib
import stat
from typing import Callable

import importlib_resources

from block_recurrent.configs import ConfigError

SPLITS = ('train', 'validation', 'test')


@dataclasses.dataclass(frozen=True)
class RawDocument:
  name: str  # a stable identifier (book id, file path, paper or repository folder)
  read: Callable[[], bytes]  # the document's raw bytes (UTF-8 for text)

  def text(self) -> str:
    """The document as text; raises a one-line ConfigError naming the file if it is not UTF-8."""
    data = self.read()
    try:
      return data.decode('utf-8')
    except UnicodeDecodeError as e:
      raise ConfigError(f'{self.name} is not valid UTF-8 (byte {e.start}): token tasks need UTF-8 text; '
                        'fix the file or use a *_bytes task') from None


def _read_file(path: pathlib.Path) -> bytes:
  try:
    data = path.read_bytes()
  except OSError as e:  # listed readable, then removed or locked: still named, never a traceback
    raise _unreadable(path, e) from None
  if path.suffix == '.xz':
    try:
      return lzma.decompress(data)
    except lzma.LZMAError as e:
      raise ConfigError(f'{path} is not a valid .xz file ({e}): re-compress it with xz, or store it '
                        'uncompressed without the .xz suffix') from None
  return data


def _unreadable(path: pathlib.Path, error: OSError) -> ConfigError:
  if error.errno == errno.ENOENT and path.is_symlink():
    return ConfigError(f'{path} is a symbolic link to {os.readlink(path)}, which does not exist: fix the link or '
                       'remove it from the data folder')
  return ConfigError(f'cannot read {path} ({error.strerror}): make it readable or move it out of the data folder')


def _readable_file(path: pathlib.Path) -> bool:
  """Whether path is a regular file (through a link); one that cannot be read is a ConfigError naming it,
  since skipping it would train on less data without a word."""
  try:
    if not stat.S_ISREG(path.stat().st_mode):
      return False  # a folder reached by a link, a pipe, a device: not a document, as before
    with path.open('rb'):
      pass
  except OSError as e:
    raise _unreadable(path, e) from None
  return True


def _files(root: pathlib.Path, skip: Callable[[str], bool] = lambda name: False,
           want: Callable[[str], bool] = lambda name: True) -> list[pathlib.Path]:
  """The readable files under root whose names are wanted, any depth, in path order (as sorted rglob).

  Entries whose names are skipped are not entered; linked folders are not followed (as rglob). A folder or
  wanted file that cannot be read is a ConfigError naming it.
  """
  found, pending = [], [root]
  while pending:
    folder = pending.pop()
    try:
      with os.scandir(folder) as scan:
        entries = list(scan)
    except OSError as e:
      raise _unreadable(folder, e) from None
    for entry in entries:
      if skip(entry.name):
        continue
      path = pathlib.Path(entry.path)
      if entry.is_dir(follow_symlinks=False):
        pending.append(path)
      elif want(entry.name) and _readable_file(path):
        found.append(path)
  return sorted(found)


def pg_mini_dir() -> pathlib.Path:
  """The embedded PG-mini corpus (seven public-domain novels in the PG19 layout)."""
  return pathlib.Path(str(importlib_resources.files('block_recurrent.data') / 'pg_mini'))


def _require_dir(folder, layout: str) -> pathlib.Path:
  path = pathlib.Path(folder).expanduser()
  if not path.is_dir():
    if path.exists():
      raise ConfigError(f'data folder {path} is a file, not a folder: give the folder that holds the data; '
                        f'expected {layout}')
    raise ConfigError(f'data folder {path} does not exist: expected {layout}')
  return path


def pg19_layout(folder, split: str) -> list[RawDocument]:
  """Books of one split of a PG19-layout folder: metadata.csv (id,title,year,link) and split/<id>.txt[.xz]."""
  layout = 'the PG19 layout (metadata.csv and train/, validation/, test/ folders of <id>.txt or <id>.txt.xz)'
  root = _require_dir(folder, layout)
  if split not in SPLITS:
    raise ConfigError(f'unknown split {split!r}: choose one of {", ".join(SPLITS)}')
  metadata = root / 'metadata.csv'
  if not metadata.is_file():
    raise ConfigError(f'{metadata} is missing: expected {layout}')
  try:
    with metadata.open(newline='', encoding='utf-8') as f:
      known = {row[0] for row in csv.reader(f) if row}
  except (UnicodeDecodeError, csv.Error) as e:
    raise ConfigError(f'{metadata} is not a UTF-8 CSV file of id,title,year,link rows ({e}): '
                      'fix or regenerate it') from None
  split_dir = _require_dir(root / split, layout)
  try:
    entries = sorted(split_dir.iterdir())
  except OSError as e:
    raise _unreadable(split_dir, e) from None
  books = [p for p in entries if p.name.endswith(('.txt', '.txt.xz')) and _readable_file(p)]
  if not books:
    raise ConfigError(f'{split_dir} holds no <id>.txt or <id>.txt.xz books: expected {layout}')
  documents = []
  for path in books:
    book_id = path.name.split('.')[0]
    if book_id not in known:
      raise ConfigError(f'book {book_id} ({path}) has no row in {metadata}: add "{book_id},title,year,link"')
    documents.append(RawDocument(f'{split}/{book_id}', lambda path=path: _read_file(path)))
  return documents


def text_folder(folder) -> list[RawDocument]:
  """Every file under a folder is one document, in path order (hidden files left out); a file that cannot
  be read (no permission, a broken link) is a ConfigError naming it."""
  root = _require_dir(folder, 'a folder of UTF-8 text files (any depth)')
  files = _files(root, skip=lambda name: name.startswith('.'))
  if not files:
    raise ConfigError(f'data folder {root} holds no files: expected a folder of UTF-8 text files')
  return [RawDocument(str(p.relative_to(root)), lambda p=p: _read_file(p)) for p in files]


def _concatenated(files: list[pathlib.Path], root: pathlib.Path) -> Callable[[], bytes]:
  def read() -> bytes:
    return b'\n'.join(_read_file(p) for p in files)
  return read


def latex_folder(folder) -> list[RawDocument]:
  """One paper = one sub-folder; its .tex files concatenated in sorted path order."""
  layout = 'one sub-folder of .tex files per paper'
  root = _require_dir(folder, layout)
  documents = []
  for paper in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')):
    files = _files(paper, want=lambda name: name.endswith('.tex'))
    if files:
      documents.append(RawDocument(paper.name, _concatenated(files, paper)))
  if not documents:
    raise ConfigError(f'data folder {root} holds no papers: expected {layout}')
  return documents


# What a repository holds that is not its own source: generated, vendored, binary or lock files.
_SKIP_DIRS = {'.git', 'node_modules', 'vendor', 'third_party', 'build', 'dist', '__pycache__', '.venv',
              'venv', 'target', 'out', 'bin', 'obj', '.idea', '.vscode'}
_SKIP_SUFFIXES = {'.min.js', '.map', '.lock', '.pyc', '.o', '.so', '.a', '.dll', '.exe', '.class', '.jar',
                  '.png', '.jpg', '.jpeg', '.gif', '.ico', '.pdf', '.zip', '.gz', '.xz', '.tar', '.bin',
                  '.woff', '.woff2', '.ttf', '.svg', '.pb', '.npy', '.npz', '.pkl', '.h5'}
_SKIP_NAMES = {'package-lock.json', 'yarn.lock', 'poetry.lock', 'Cargo.lock', 'go.sum'}
_MAX_SOURCE_BYTES = 1 << 20


def _not_source_dir(name: str) -> bool:
  return name in _SKIP_DIRS or name.startswith('.')


def _source_name(name: str) -> bool:
  return not (name in _SKIP_NAMES or any(name.endswith(s) for s in _SKIP_SUFFIXES) or '.generated.' in name)


def _is_source(path: pathlib.Path) -> bool:
  """Small text files (of a readable file listed by `_files`)."""
  try:
    if path.stat().st_size > _MAX_SOURCE_BYTES:
      return False
    with path.open('rb') as f:
      head = f.read(8192)
  except OSError as e:
    raise _unreadable(path, e) from None
  return b'\0' not in head  # binary files


def github_folder(folder) -> list[RawDocument]:
  """One repository = one sub-folder; its source files concatenated in path order, with generated,
  vendored, binary and lock files left out."""
  layout = 'one sub-folder per repository'
  root = _require_dir(folder, layout)
  documents = []
  for repo in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith('.')):
    files = [p for p in _files(repo, skip=_not_source_dir, want=_source_name) if _is_source(p)]
    if files:
      documents.append(RawDocument(repo.name, _concatenated(files, repo)))
  if not documents:
    raise ConfigError(f'data folder {root} holds no repositories with source files: expected {layout}')
  return documents
