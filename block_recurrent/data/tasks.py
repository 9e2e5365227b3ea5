"""seqio tasks for PG19, arXiv, GitHub and local corpora (the only module that imports seqio/TensorFlow).

Tasks, by name (each has a `_bytes` and a `_tokens` form):
    pg_mini_*      the embedded default: seven public-domain novels in the PG19 layout, read offline
    pg19_*         TFDS `pg19` (prepared in TFDS_DATA_DIR), or a local PG19-layout folder given as data_dir
    arxiv_*        TFDS `scientific_papers/arxiv` when prepared, or a folder of LaTeX papers as data_dir
    github_*       a folder of repositories as data_dir
    text_folder_*  any folder of UTF-8 text files (or the PG19 layout) as data_dir
Every example has two features: 'targets', the token ids of one whole document (no EOS; the batcher in
segments.py marks document starts instead), and 'name', the file it came from ('' for TFDS). Byte ids are
shifted past pad/eos/unk as seqio's byte vocabulary does; token tasks use a lossless SentencePiece model
(the embedded 8k PG-mini model unless a model path is given).
"""

from __future__ import annotations

import functools
import os
import pathlib
import zlib
from typing import Iterator

os.environ.setdefault('NO_GCE_CHECK', 'true')  # never probe cloud metadata servers

import numpy as np  # noqa: E402

from block_recurrent import quiet  # noqa: E402

with quiet.filtered_stderr():  # TensorFlow's C++ start-up notices (no CUDA here, oneDNN) are not ours to print
  import seqio  # noqa: E402
  import tensorflow as tf  # noqa: E402
  import tensorflow_datasets as tfds  # noqa: E402
  tf.config.list_physical_devices()  # its CUDA probe ('failed call to cuInit') at the first op, filtered here

from block_recurrent.configs import ConfigError  # noqa: E402
from block_recurrent.data import corpus, segments, vocab as vocab_lib  # noqa: E402

CORPORA = ('pg_mini', 'pg19', 'arxiv', 'github', 'text_folder')
DEFAULT_SPM = pathlib.Path(__file__).resolve().parent / 'vocabs' / 'pg_mini_8k.model'
_TFDS = {'pg19': ('pg19', 'book_text'), 'arxiv': ('scientific_papers/arxiv', 'article')}
_PG19_HOWTO = ('PG19 is not prepared: set data_dir to a folder in the PG19 layout (metadata.csv, train/, '
               'validation/, test/), or run `python -c "import block_recurrent.data.tasks as t; '
               't.prepare_pg19()"` once with internet access (~11 GB into TFDS_DATA_DIR)')


def _tfds_builder(name: str):
  data_dir = os.environ.get('TFDS_DATA_DIR')
  try:
    builder = tfds.builder(_TFDS[name][0], data_dir=data_dir, try_gcs=False)
  except Exception:  # pylint: disable=broad-except
    return None
  return builder if tf.io.gfile.exists(os.path.join(builder.data_dir, 'dataset_info.json')) else None


def prepare_pg19(source_dir: str | None = None, data_dir: str | None = None) -> None:
  """Prepares TFDS `pg19` in data_dir (default TFDS_DATA_DIR) with the real TFDS builder.

  With source_dir=None it reads DeepMind's public bucket (~11 GB; needs the internet, never run by
  tests). With a local folder in the PG19 layout (plain or .xz books, e.g. the embedded PG-mini) it
  prepares offline: the builder is pointed at a decompressed copy of that folder.
  """
  import importlib
  import lzma
  import shutil
  import tempfile

  module = importlib.import_module('tensorflow_datasets.datasets.pg19.pg19_dataset_builder')
  builder = tfds.builder('pg19', data_dir=data_dir or os.environ.get('TFDS_DATA_DIR'), try_gcs=False)
  if source_dir is None:
    builder.download_and_prepare()
    return
  with tempfile.TemporaryDirectory() as staging:
    for split in corpus.SPLITS:
      (pathlib.Path(staging) / split).mkdir()
      for book in corpus.pg19_layout(source_dir, split):
        target = pathlib.Path(staging) / split / (book.name.split('/')[1] + '.txt')
        target.write_bytes(book.read())
    shutil.copy(pathlib.Path(source_dir) / 'metadata.csv', pathlib.Path(staging) / 'metadata.csv')
    saved, module._DATA_DIR = module._DATA_DIR, staging  # pylint: disable=protected-access
    try:
      builder.download_and_prepare()
    finally:
      module._DATA_DIR = saved  # pylint: disable=protected-access


def raw_documents(corpus_name: str, split: str, data_dir: str | None = None) -> list[corpus.RawDocument]:
  """The raw documents of a corpus split from a local folder (TFDS corpora go through `task()`)."""
  if corpus_name == 'pg_mini':
    return corpus.pg19_layout(data_dir or corpus.pg_mini_dir(), split)
  if data_dir is None:
    if corpus_name == 'pg19':
      raise ConfigError(_PG19_HOWTO)
    raise ConfigError(f'{corpus_name} needs a data_dir (the folder of documents)')
  if corpus_name == 'pg19':
    return corpus.pg19_layout(data_dir, split)
  if corpus_name == 'arxiv':
    return _split_of(corpus.latex_folder(data_dir), split)
  if corpus_name == 'github':
    return _split_of(corpus.github_folder(data_dir), split)
  if corpus_name == 'text_folder':
    root = pathlib.Path(data_dir)
    if (root / 'metadata.csv').is_file():
      return corpus.pg19_layout(root, split)
    return _split_of(corpus.text_folder(root), split)
  raise ConfigError(f'unknown corpus {corpus_name!r}: choose one of {", ".join(CORPORA)}')


def texts(corpus_name: str, split: str, data_dir: str | None = None) -> Iterator[str]:
  """The documents of a split as text, from the folder or, for TFDS corpora without one, from TFDS."""
  if corpus_name in _TFDS and data_dir is None:
    source = task(f'{corpus_name}_bytes').source
    for example in source.get_dataset(split=split, shuffle=False).as_numpy_iterator():
      yield example['text'].decode('utf-8')
    return
  for doc in raw_documents(corpus_name, split, data_dir):
    yield doc.text()


def _split_of(documents: list[corpus.RawDocument], split: str) -> list[corpus.RawDocument]:
  """Folders without splits: a fixed hash of each name puts ~90% in train, ~5% each in validation/test."""
  if split not in corpus.SPLITS:
    raise ConfigError(f'unknown split {split!r}: choose one of {", ".join(corpus.SPLITS)}')
  if len(documents) < 3:
    return documents  # too few to split: every split sees them all
  # surrogateescape: a Linux file name need not be UTF-8 (the bucket of every UTF-8 name is unchanged).
  bucket = lambda name: zlib.crc32(name.encode('utf-8', 'surrogateescape')) % 100
  chosen = {'train': range(0, 90), 'validation': range(90, 95), 'test': range(95, 100)}[split]
  return [d for d in documents if bucket(d.name) in chosen]


@functools.lru_cache(maxsize=None)
def token_vocabulary(spm_path: str | None = None) -> seqio.Vocabulary:
  """A SentencePiece vocabulary (loaded lazily: registering a task never reads the model)."""
  return seqio.SentencePieceVocabulary(str(spm_path or DEFAULT_SPM))


def _text_source(corpus_name: str, kind: str, data_dir: str | None) -> seqio.DataSource:
  tfds_name = _TFDS.get(corpus_name)
  if data_dir is None and tfds_name is not None:
    def from_tfds(split, shuffle_files, seed=None):
      # The builder is looked up when the data is read, not when the task is registered (at import, for
      # pg19 and arxiv): loading TFDS's dataset modules takes half a second that a run on other data,
      # such as every brt-train on the embedded pg_mini, never needs.
      builder = _tfds_builder(corpus_name)
      if builder is None:
        raise ConfigError(_PG19_HOWTO if corpus_name == 'pg19' else
                          f'TFDS {tfds_name[0]} is not prepared in TFDS_DATA_DIR: prepare it, or give data_dir')
      ds = builder.as_dataset(split=split, shuffle_files=shuffle_files)
      return ds.map(lambda ex: {'text': ex[tfds_name[1]], 'name': tf.constant('')})  # no names: ids stand in
    return seqio.FunctionDataSource(from_tfds, splits=corpus.SPLITS)

  def from_folder(split, shuffle_files, seed=None):
    del shuffle_files, seed  # document order is the batcher's business
    documents = raw_documents(corpus_name, split, data_dir)
    def generate():
      for doc in documents:
        try:
          # Token tasks need UTF-8: doc.text() names the file that is not (byte tasks take any bytes).
          text = doc.text().encode() if kind == 'tokens' else doc.read()
        except ConfigError as e:
          # It reaches documents() as TensorFlow's error text, which drops a line that is not UTF-8 (a
          # file name that is not): escape it so that the line survives.
          raise ConfigError(str(e).encode('utf-8', 'backslashreplace').decode()) from None
        yield {'text': text, 'name': doc.name.encode('utf-8', 'surrogateescape')}
    signature = {'text': tf.TensorSpec((), tf.string), 'name': tf.TensorSpec((), tf.string)}
    return tf.data.Dataset.from_generator(generate, output_signature=signature)
  return seqio.FunctionDataSource(from_folder, splits=corpus.SPLITS)


def task(name: str, data_dir: str | None = None, spm_path: str | None = None) -> seqio.Task:
  """The seqio task `name` (e.g. 'pg_mini_bytes'), registered under that name for these settings."""
  corpus_name, _, kind = name.rpartition('_')
  if corpus_name not in CORPORA or kind not in ('bytes', 'tokens'):
    raise ConfigError(f'unknown task {name!r}: use <corpus>_bytes or <corpus>_tokens with corpus one of '
                      f'{", ".join(CORPORA)}')
  vocabulary = seqio.ByteVocabulary() if kind == 'bytes' else token_vocabulary(spm_path)
  key = (name, data_dir, spm_path)
  if _REGISTERED.get(name) != key:
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=_text_source(corpus_name, kind, data_dir),
        preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text', 'name': 'name'}),
                       seqio.preprocessors.tokenize],
        output_features={'targets': seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)})
    _REGISTERED[name] = key
  return seqio.get_mixture_or_task(name)


_REGISTERED: dict[str, tuple] = {}
for _corpus in ('pg_mini', 'pg19', 'arxiv'):
  for _kind in ('bytes', 'tokens'):
    task(f'{_corpus}_{_kind}')


def vocab_size(name: str, spm_path: str | None = None) -> int:
  """How many token ids task `name` produces (its vocabulary's size)."""
  kind = name.rpartition('_')[2]
  return (seqio.ByteVocabulary() if kind == 'bytes' else token_vocabulary(spm_path)).vocab_size


def num_bytes_table(t: seqio.Task) -> np.ndarray:
  """int32 [vocab]: the UTF-8 bytes each id of the task's vocabulary stands for."""
  vocabulary = t.output_features['targets'].vocabulary
  if isinstance(vocabulary, seqio.ByteVocabulary):
    table = np.ones(vocabulary.vocab_size, np.int32)
    table[:vocab_lib.BYTE_OFFSET] = 0
    return table
  if not pathlib.Path(vocabulary.sentencepiece_model_file).is_file():
    raise ConfigError(f'SentencePiece model {vocabulary.sentencepiece_model_file} not found: train one with '
                      '`brt-vocab --output=PREFIX` and pass PREFIX.model')
  return vocab_lib.piece_num_bytes(vocabulary.sentencepiece_model_file)


def documents(name: str, split: str, *, data_dir: str | None = None, spm_path: str | None = None,
              process_index: int = 0, process_count: int = 1) -> list[segments.Document]:
  """The tokenised documents of this host's shard of a split, in the source's order."""
  t = task(name, data_dir, spm_path)
  table = num_bytes_table(t)
  ds = t.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False,
                     shard_info=seqio.ShardInfo(process_index, process_count))
  out = []
  try:
    for i, example in enumerate(ds.as_numpy_iterator()):
      tokens = example['targets'].astype(np.int32)
      # The file's name, for the cursor's fingerprint and its messages; a name that is not UTF-8 escaped.
      name = example['name'].decode('utf-8', 'backslashreplace') or None
      out.append(segments.Document(tokens=tokens, num_bytes=table[tokens],
                                   doc_id=i * process_count + process_index, name=name))
  except tf.errors.OpError as e:  # our ConfigError raised inside tf.data: surface its one line
    lines = [l for l in str(e.message).splitlines() if 'ConfigError: ' in l]
    if lines:
      raise ConfigError(lines[-1].split('ConfigError: ', 1)[1].strip()) from None
    raise
  return out
