"""Fuzzing the corpus readers (data/corpus.py): random bytes, names and layouts in a text folder or a PG19
folder give back every document a reader should return, byte for byte, or one clear ConfigError line."""

from __future__ import annotations

import csv
import io
import pathlib
import tempfile

from hypothesis import example, given, strategies as st

from fuzzing import attempt, check_document, file_bytes, folder_files, fuzz, is_hidden, stored, write_tree

from block_recurrent.data import corpus


@fuzz(30)
@given(files=folder_files())
@example(files={'f.xz': (b'not xz', None)})  # was lzma.LZMAError
@example(files={'.f': (b'hidden', b'hidden'), '.dx/f': (b'hidden', b'hidden')})
def test_text_folder_returns_every_visible_file_or_says_why_not(files):
  with tempfile.TemporaryDirectory() as root:
    write_tree(root, files)
    documents, error = attempt(corpus.text_folder, root)
    visible = sorted(pathlib.PurePosixPath(p) for p in files if not is_hidden(p))
    if not visible:
      assert error is not None and 'holds no files' in str(error)
      return
    assert error is None
    assert [d.name for d in documents] == [str(p) for p in visible]
    for document in documents:
      check_document(document, files[document.name][1])


@st.composite
def pg19_folders(draw):
  """A PG19-layout folder: (files, ids listed in metadata.csv or None if there is none, whether it is junk)."""
  ids = draw(st.lists(st.integers(0, 99999).map(str), unique=True, max_size=6))
  files = {}
  for book_id in ids:
    split = draw(st.sampled_from(corpus.SPLITS))
    compress = draw(st.sampled_from([None, True, False]))  # plain .txt, .txt.xz, corrupt .txt.xz
    data = draw(file_bytes)
    suffix = '.txt' if compress is None else '.txt.xz'
    files[f'{split}/{book_id}{suffix}'] = (stored(data, bool(compress)), None if compress is False else data)
  listed = [i for i in ids if draw(st.integers(0, 9)) > 0]
  for split in draw(st.lists(st.sampled_from(corpus.SPLITS), unique=True, max_size=3)):
    files[f'{split}/notes.md'] = (b'not a book', b'not a book')  # ignored
  if draw(st.booleans()):  # a folder named like a book, with a row in metadata.csv: not a book
    files[f'{draw(st.sampled_from(corpus.SPLITS))}/100000.txt/inner'] = (b'x', b'x')
    listed.append('100000')
  metadata = draw(st.sampled_from(['csv', 'csv', 'missing', 'junk']))
  if metadata != 'missing':
    out = io.StringIO()
    writer = csv.writer(out)
    for book_id in listed:
      writer.writerow([book_id, draw(st.text(max_size=20)), '1900', 'https://example.org/' + book_id])
    text = out.getvalue().encode()
    if metadata == 'junk':
      text += draw(file_bytes)
    files['metadata.csv'] = (text, text)
  return files, (None if metadata == 'missing' else listed), metadata == 'junk'


@fuzz(30)
@given(folder=pg19_folders(), split=st.sampled_from(corpus.SPLITS + ('dev',)))
@example(folder=({'metadata.csv': (b'1,\xff\xfe,x\n', b''), 'train/1.txt': (b'hi', b'hi')}, ['1'], True),
         split='train')  # metadata.csv not UTF-8: was UnicodeDecodeError
@example(folder=({'metadata.csv': (b'a' * 200_000, b''), 'train/1.txt': (b'hi', b'hi')}, ['1'], True),
         split='train')  # a field over csv's limit: was csv.Error
@example(folder=({'metadata.csv': (b'1\n2\n', b''), 'train/1.txt': (b'hi', b'hi'),
                  'train/2.txt/inner': (b'x', b'x')}, ['1', '2'], False), split='train')  # was IsADirectoryError
def test_pg19_folder_returns_the_books_of_a_split_or_says_why_not(folder, split):
  files, listed, junk = folder
  with tempfile.TemporaryDirectory() as root:
    write_tree(root, files)
    documents, error = attempt(corpus.pg19_layout, root, split)
    books = sorted(p for p in files if p.startswith(split + '/') and p.count('/') == 1
                   and p.endswith(('.txt', '.txt.xz')))
    books_ok = listed is not None and books and all(p.split('/')[1].split('.')[0] in listed for p in books)
    if split in corpus.SPLITS and books_ok and not junk:
      assert error is None, error
    if documents is None:
      assert error is not None
      return
    assert books_ok or junk  # junk may list more books
    assert [d.name for d in documents] == [p.split('.')[0] for p in books]
    for document, path in zip(documents, books):
      check_document(document, files[path][1])
