"""seqio tasks, corpora and vocabularies on real text (the embedded PG-mini novels), offline; and the text
folder task fuzzed: random files give their bytes or tokens, or one clear line (tests/fuzzing.py)."""

import lzma
import os
import pathlib
import tempfile
import time

from hypothesis import example, given, strategies as st
import numpy as np
import pytest
import sentencepiece as spm

from fuzzing import attempt, folder_files, fuzz, write_tree

from block_recurrent import ConfigError
from block_recurrent.data import corpus, tasks, vocab
from block_recurrent.cli import vocab as vocab_cli

PG_MINI = corpus.pg_mini_dir()


def _book(split, book_id):
  return lzma.decompress((PG_MINI / split / f'{book_id}.txt.xz').read_bytes())


def test_pg_mini_bytes_task_is_the_books_byte_for_byte():
  docs = tasks.documents('pg_mini_bytes', 'test')
  assert len(docs) == 2
  for doc, book_id in zip(docs, ('105', '2701')):
    raw = np.frombuffer(_book('test', book_id), np.uint8).astype(np.int32) + vocab.BYTE_OFFSET
    np.testing.assert_array_equal(doc.tokens, raw)
    assert int(doc.num_bytes.sum()) == raw.size


def test_sentencepiece_round_trip_is_exact_on_the_test_novels():
  sp = spm.SentencePieceProcessor(model_file=str(tasks.DEFAULT_SPM))
  docs = tasks.documents('pg_mini_tokens', 'test')
  for doc, book_id in zip(docs, ('105', '2701')):
    text = _book('test', book_id)
    assert sp.decode(doc.tokens.tolist()).encode() == text
    assert int(doc.num_bytes.sum()) == len(text)  # honest bits per byte
    assert doc.tokens.size < len(text) / 2.5  # a real vocabulary, not bytes (Austen-trained on Melville: 2.9)
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)


def test_brt_vocab_trains_8k_in_seconds(tmp_path):
  t0 = time.time()
  assert vocab_cli.main([f'--output={tmp_path}/v8k', '--vocab_size=8000', '--task=pg_mini_tokens']) == 0
  assert time.time() - t0 < 60
  sp = spm.SentencePieceProcessor(model_file=f'{tmp_path}/v8k.model')
  assert sp.get_piece_size() == 8000
  text = _book('validation', '121').decode()
  assert sp.decode(sp.encode(text)) == text
  sizes = vocab.piece_num_bytes(f'{tmp_path}/v8k.model')
  assert int(sizes[sp.encode(text)].sum()) == len(text.encode())


def test_host_shards_are_disjoint_and_cover_the_split():
  whole = tasks.documents('pg_mini_bytes', 'train')
  shards = [tasks.documents('pg_mini_bytes', 'train', process_index=i, process_count=3) for i in range(3)]
  ids = [d.doc_id for shard in shards for d in shard]
  assert sorted(ids) == [d.doc_id for d in whole] == list(range(4))
  by_id = {d.doc_id: d for d in whole}
  for shard in shards:
    for d in shard:
      np.testing.assert_array_equal(d.tokens, by_id[d.doc_id].tokens)


def test_pg19_tasks_read_a_local_pg19_folder_and_explain_when_missing(tmp_path, monkeypatch):
  docs = tasks.documents('pg19_bytes', 'validation', data_dir=str(PG_MINI))
  assert len(docs) == 1 and docs[0].tokens.size == len(_book('validation', '121'))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  tasks._REGISTERED.pop('pg19_bytes', None)  # re-register against the empty TFDS dir
  with pytest.raises(ConfigError, match='PG19 is not prepared') as info:
    tasks.documents('pg19_bytes', 'train')
  assert '\n' not in str(info.value)


def test_real_tfds_pg19_builder_prepared_offline(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  tasks.prepare_pg19(source_dir=str(PG_MINI))
  tasks._REGISTERED.pop('pg19_bytes', None)
  docs = tasks.documents('pg19_bytes', 'validation')
  assert len(docs) == 1
  raw = np.frombuffer(_book('validation', '121').strip(), np.uint8).astype(np.int32) + vocab.BYTE_OFFSET
  np.testing.assert_array_equal(docs[0].tokens, raw)  # TFDS strips surrounding whitespace
  assert list(tasks.texts('pg19', 'validation')) == [_book('validation', '121').strip().decode()]
  tasks._REGISTERED.pop('pg19_bytes', None)


def _write(path: pathlib.Path, data: bytes):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


def test_text_folder_bytes_and_tokens(tmp_path):
  _write(tmp_path / 'b.txt', 'second ✓\n'.encode())
  _write(tmp_path / 'a.txt', b'first\n')
  _write(tmp_path / '.hidden', b'never')
  docs = tasks.documents('text_folder_bytes', 'train', data_dir=str(tmp_path))
  assert [bytes((d.tokens - vocab.BYTE_OFFSET).astype(np.uint8)) for d in docs] == [b'first\n',
                                                                                     'second ✓\n'.encode()]
  _write(tmp_path / 'c.txt', b'bad \xff\xfe bytes')
  assert len(tasks.documents('text_folder_bytes', 'train', data_dir=str(tmp_path))) == 3  # bytes still work
  with pytest.raises(ConfigError, match=r'c\.txt is not valid UTF-8') as info:
    tasks.documents('text_folder_tokens', 'train', data_dir=str(tmp_path))
  assert '\n' not in str(info.value)


def test_github_folder_keeps_source_and_drops_vendored_binary_generated(tmp_path):
  repo = tmp_path / 'repo1'
  _write(repo / 'src' / 'b.py', b'print(2)\n')
  _write(repo / 'src' / 'a.py', b'print(1)\n')
  _write(repo / 'README.md', b'# hi\n')
  _write(repo / 'node_modules' / 'x.js', b'vendored')
  _write(repo / 'vendor' / 'y.go', b'vendored')
  _write(repo / 'logo.png', b'\x89PNG\0\0')
  _write(repo / 'data.bin2', b'abc\0def')
  _write(repo / 'package-lock.json', b'{}')
  _write(repo / 'app.min.js', b'minified')
  _write(tmp_path / 'repo2' / 'main.c', b'int main(){}\n')
  docs = corpus.github_folder(tmp_path)
  assert [d.name for d in docs] == ['repo1', 'repo2']
  assert docs[0].read() == b'# hi\n\nprint(1)\n\nprint(2)\n'


def test_latex_folder_concatenates_a_papers_tex_files(tmp_path):
  _write(tmp_path / 'paper1' / 'sections' / 'intro.tex', b'\\section{Intro}')
  _write(tmp_path / 'paper1' / 'main.tex', b'\\begin{document}')
  _write(tmp_path / 'paper1' / 'fig.pdf', b'%PDF')
  _write(tmp_path / 'paper2' / 'p.tex', b'x')
  docs = corpus.latex_folder(tmp_path)
  assert [d.name for d in docs] == ['paper1', 'paper2']
  assert docs[0].read() == b'\\begin{document}\n\\section{Intro}'


def test_bad_folders_fail_in_one_clear_line(tmp_path):
  with pytest.raises(ConfigError, match='does not exist: expected the PG19 layout'):
    corpus.pg19_layout(tmp_path / 'missing', 'train')
  with pytest.raises(ConfigError, match='holds no files'):
    corpus.text_folder(tmp_path)
  _write(tmp_path / 'pg' / 'metadata.csv', b'1,A Book,1900,link\n')
  _write(tmp_path / 'pg' / 'train' / '1.txt', b'one')
  _write(tmp_path / 'pg' / 'train' / '2.txt', b'two')
  with pytest.raises(ConfigError, match=r'book 2 .* has no row in .*metadata\.csv'):
    corpus.pg19_layout(tmp_path / 'pg', 'train')
  with pytest.raises(ConfigError, match='unknown task'):
    tasks.task('pg20_bytes')
  with pytest.raises(ConfigError, match='SentencePiece model .* not found'):
    tasks.documents('pg_mini_tokens', 'test', spm_path=str(tmp_path / 'none.model'))


@fuzz(2)
@given(files=folder_files(), split=st.sampled_from(corpus.SPLITS), kind=st.sampled_from(['bytes', 'tokens']))
@example(files={'fa.txt': (b'one\0', b'one\0'), 'f\udcff.txt': (b'\xff\xfe', b'\xff\xfe'),
                'fb': (b'', b''), 'fc.xz': (b'corrupt', None)}, split='train', kind='bytes')
@example(files={'fa.txt': ('e\u0301 \U0001F600\r\n'.encode(), 'e\u0301 \U0001F600\r\n'.encode()),
                'f\udce9t': (b'\0 x', b'\0 x'), 'fb': (b'', b'')}, split='train', kind='tokens')
def test_text_folder_task_is_the_files_token_for_token(files, split, kind):
  with tempfile.TemporaryDirectory() as root:
    write_tree(root, files)
    raw, raw_error = attempt(tasks.raw_documents, 'text_folder', split, root)
    documents, error = attempt(tasks.documents, f'text_folder_{kind}', split, data_dir=root)
    if raw_error is not None:
      assert str(error) == str(raw_error)
      return
    # The first document that cannot be read (or, for tokens, decoded) fails the task with its line.
    for document in raw:
      _, read_error = attempt(document.read if kind == 'bytes' else document.text)
      if read_error is not None:  # a name that is not UTF-8 comes through TensorFlow escaped
        assert str(error) == str(read_error).encode('utf-8', 'backslashreplace').decode()
        return
    assert error is None, error
    assert [d.doc_id for d in documents] == list(range(len(raw)))
    for document, source in zip(documents, raw):
      data = source.read()
      if kind == 'bytes':
        byte_ids = np.frombuffer(data, np.uint8).astype(np.int32) + vocab.BYTE_OFFSET
        np.testing.assert_array_equal(document.tokens, byte_ids)
        np.testing.assert_array_equal(document.num_bytes, np.ones(len(data)))
      elif '\u2581' not in source.text():  # see test_sentencepiece_loses_the_lower_block_character
        assert tasks.token_vocabulary().decode(document.tokens.tolist()) == source.text()
        assert int(document.num_bytes.sum()) == len(data)


def test_sentencepiece_loses_the_lower_block_character():
  """U+2581 is SentencePiece's own whitespace mark: the embedded model decodes it as a space."""
  sp = spm.SentencePieceProcessor(model_file=str(pathlib.Path(vocab.__file__).parent / 'vocabs' / 'pg_mini_8k.model'))
  assert sp.decode(sp.encode('a\u2581b')) == 'a b'  # the day this fails, drop the exclusion above
  assert sp.decode(sp.encode('a b\0\r\n\ufeff\U0001F600')) == 'a b\0\r\n\ufeff\U0001F600'
