"""What the fuzz tests share (tests/data/test_corpus.py, test_tasks.py, test_segments_fuzz.py and
tests/test_configs.py): hypothesis settings, the one-clear-line check, random files and folders, documents.

Fuzzing what a user controls: every outcome is a success or a ConfigError of one clear line. Any other
exception is a bug; its fix is a check that raises ConfigError saying what is wrong and what to do, and
the input that found it is an @example in the test that found it. Examples are derandomized, so CI sees
the same inputs on every run.
"""

from __future__ import annotations

import lzma
import pathlib

import hypothesis
from hypothesis import strategies as st
import numpy as np

from block_recurrent.configs import ConfigError
from block_recurrent.data import corpus, segments


def fuzz(max_examples: int):
  return hypothesis.settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))


def assert_clear(error: ConfigError) -> None:
  message = str(error)
  assert message and message == message.strip() and '\n' not in message and len(message) < 1000, repr(message)


def attempt(fn, *args, **kwargs):
  """(result, None), or (None, error) for a ConfigError of one clear line; any other exception fails."""
  try:
    return fn(*args, **kwargs), None
  except ConfigError as error:
    assert_clear(error)
    return None, error


# Files on disk: bytes and names a user's corpus may hold.

SPECIAL_BYTES = [
    b'', b'\0', b'\0' * 64, b'\xff\xfe\xfd', b'\xc3', b'abc\xe2\x82', b'\xed\xa0\x80', b'\xc0\x80',
    b'\xf4\x90\x80\x80', '\ufeffBOM'.encode(), b'\r\n\r\n\r', b'\n' * 1000, b'a,"b\n',
    'e\u0301 \u200b\u202e \U0001F600 \u2581 \ufffd \u0000 \U0010FFFF'.encode(),
]
odd_text = st.text(st.characters(codec='utf-8', categories=('Cc', 'Cf', 'Co', 'Mn', 'Zs', 'Zl', 'Zp', 'So',
                                                            'Lo')), max_size=40)
huge_line = st.tuples(st.sampled_from([b'a', b'\0', 'é'.encode(), b'\xff', b' \t']),
                      st.integers(1 << 15, 1 << 18)).map(lambda t: t[0] * (t[1] // len(t[0])))
chunk = st.one_of(st.sampled_from(SPECIAL_BYTES), st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                  odd_text.map(str.encode), huge_line)
file_bytes = st.one_of(chunk, st.lists(chunk, max_size=3).map(b''.join))
# Names with spaces, accents and, as a Linux file name may be, bytes that are not UTF-8 (surrogate escapes).
name_part = st.one_of(st.text(st.sampled_from('abxyz019-_ é~'), min_size=1, max_size=6),
                      st.sampled_from(['x\udcff', '\udce9t', 'Ω ω']))


def stored(data: bytes, compress: bool) -> bytes:
  return lzma.compress(data, preset=0) if compress else data


@st.composite
def folder_files(draw) -> dict[str, tuple[bytes, bytes | None]]:
  """{relative path: (bytes on disk, bytes a reader returns, or None for a corrupt .xz file)}."""
  files = {}
  for _ in range(draw(st.integers(0, 6))):
    # Prefixes keep a directory from sharing a file's name; '.' makes them hidden.
    folders = [draw(st.sampled_from(['d', 'd', '.d'])) + draw(name_part)
               for _ in range(draw(st.integers(0, 2)))]
    suffix = draw(st.sampled_from(['.txt', '', '.md', '.xz', '.txt.xz']))
    name = draw(st.sampled_from(['f', 'f', 'f', '.f'])) + draw(name_part) + suffix
    data = draw(file_bytes)
    compress = suffix.endswith('.xz') and draw(st.booleans())
    files['/'.join(folders + [name])] = (stored(data, compress), data if compress or not suffix.endswith('.xz')
                                         else None)
  return files


def write_tree(root: str, files: dict[str, tuple[bytes, bytes | None]]) -> None:
  for relative, (written, _) in files.items():
    path = pathlib.Path(root, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(written)


def is_hidden(relative: str) -> bool:
  return any(part.startswith('.') for part in relative.split('/'))


def check_document(document: corpus.RawDocument, expected: bytes | None) -> None:
  """read() gives the bytes (or names a corrupt archive); text() gives them decoded, or says not UTF-8."""
  data, error = attempt(document.read)
  if expected is None:
    assert error is not None and document.name in str(error), error
    return
  assert error is None and data == expected
  text, error = attempt(document.text)
  try:
    decoded = expected.decode('utf-8')
  except UnicodeDecodeError:
    assert error is not None and 'is not valid UTF-8' in str(error) and document.name in str(error)
    return
  assert error is None and text == decoded


def make_documents(lengths: list[int], seed: int) -> list[segments.Document]:
  rng = np.random.default_rng(seed)
  return [segments.Document(tokens=rng.integers(1, 2**31 - 1, n, dtype=np.int64),
                            num_bytes=rng.integers(0, 5, n, dtype=np.int32), doc_id=i)
          for i, n in enumerate(lengths)]
