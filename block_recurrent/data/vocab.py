"""Vocabularies: bytes, and lossless SentencePiece models trained offline by `brt-vocab`.

Lossless means decode(encode(text)) == text for any UTF-8 text: no normalisation, no dummy prefix, no
whitespace folding, and byte fallback for characters the pieces do not cover. Ids follow T5: pad 0,
eos 1, unk 2. Every piece also has an exact UTF-8 byte length, so bits per byte are honest for any
tokenizer (`piece_num_bytes`).
"""

from __future__ import annotations

import argparse
import io
import pathlib
import re
import sys
import time
from typing import Iterable

import numpy as np
import sentencepiece as spm

from block_recurrent.configs import ConfigError

BYTE_OFFSET = 3  # seqio's byte vocabulary: ids 0-2 are pad, eos, unk; byte b is id b + 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
_BYTE_PIECE = re.compile(r'^<0x[0-9A-F]{2}>$')


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_prefix: str, *,
                        max_sentence_length: int = 1 << 14, input_sentence_size: int = 2_000_000) -> str:
  """Trains a lossless unigram model on the lines of `texts`; returns the .model path."""
  if vocab_size < 260:
    raise ConfigError(f'vocab_size {vocab_size} is too small: a lossless model needs >= 260 (256 byte pieces)')

  def lines():
    for text in texts:
      for line in text.splitlines(keepends=True):
        if line.strip():
          yield line[:max_sentence_length]

  spm.SentencePieceTrainer.train(
      sentence_iterator=lines(), model_prefix=model_prefix, vocab_size=vocab_size, model_type='unigram',
      character_coverage=0.9995, byte_fallback=True, normalization_rule_name='identity',
      add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
      allow_whitespace_only_pieces=True, max_sentence_length=max_sentence_length,
      input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=2, minloglevel=2, train_extremely_large_corpus=False)
  return model_prefix + '.model'


def piece_num_bytes(model_path: str) -> np.ndarray:
  """int32 [vocab]: the UTF-8 bytes each id stands for (0 for pad/eos/unk, 1 for byte-fallback pieces)."""
  sp = spm.SentencePieceProcessor(model_file=model_path)
  sizes = np.zeros(sp.get_piece_size(), np.int32)
  for i in range(sp.get_piece_size()):
    if sp.is_control(i) or sp.is_unknown(i):
      continue
    piece = sp.id_to_piece(i)
    sizes[i] = 1 if sp.is_byte(i) or _BYTE_PIECE.match(piece) else len(piece.replace('\u2581', ' ').encode())
  return sizes


def check_model(model_path) -> int:
  """The number of pieces of a SentencePiece model file, or a ConfigError naming the file (the model is a
  protobuf: reading one runs no code)."""
  if '://' in str(model_path):
    return 0  # a bucket: read by seqio through tf.io.gfile when the task runs
  path = pathlib.Path(model_path)
  if not path.is_file():
    raise ConfigError(f'SentencePiece model {model_path} not found: train one with `brt-vocab --output=PREFIX` '
                      'and pass PREFIX.model')
  try:
    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
  except (RuntimeError, OSError) as e:
    reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    raise ConfigError(f'{model_path} is not a SentencePiece model ({reason}): pass a PREFIX.model file written by '
                      'brt-vocab') from None


def main(argv: list[str] | None = None) -> int:
  from block_recurrent import cli  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog='brt-vocab', description='Train a lossless SentencePiece vocabulary '
                                   "offline on a corpus's train split.")
  parser.add_argument('--task', default='pg_mini',
                      help='a corpus (pg_mini, pg19, arxiv, github, text_folder) or a task such as pg19_tokens')
  parser.add_argument('--data_dir', default=None, help='the corpus folder (not needed for pg_mini)')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--output', required=True, help='model prefix: writes PREFIX.model and PREFIX.vocab')
  cli.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    from block_recurrent.data import tasks  # the seqio/TensorFlow import, only when the command runs
    t0 = time.time()
    corpus_name = args.task.removesuffix('_bytes').removesuffix('_tokens')
    if corpus_name not in tasks.CORPORA:
      raise ConfigError(f'--task {args.task!r} is not a corpus: choose one of {", ".join(tasks.CORPORA)}')
    if args.vocab_size < 260:  # before the corpus is read
      raise ConfigError(f'--vocab_size {args.vocab_size} is too small: a lossless model needs >= 260 '
                        '(256 byte pieces)')
    if args.vocab_size > 2 ** 20:  # 32-bit in SentencePiece; 2**31 - 1 ran over 10 minutes on PG-mini
      raise ConfigError(f'--vocab_size {args.vocab_size} is too large: give at most {2 ** 20} pieces '
                        '(large models use 32000 to 256000)')
    if args.data_dir == '':  # an empty folder name would read the current folder as the corpus
      raise ConfigError('--data_dir is empty: give the corpus folder, or leave it out for pg_mini')
    output = pathlib.Path(args.output)
    if output.name in ('', '.', '..') or output.is_dir():
      raise ConfigError(f'--output {args.output} is a folder: give a file prefix such as {output / "vocab"}')
    try:
      output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise ConfigError(f'cannot create the folder of --output {args.output}: {e.strerror}') from None
    texts = tasks.texts(corpus_name, 'train', args.data_dir)
    try:
      path = train_sentencepiece(texts, args.vocab_size, args.output)
    except RuntimeError as e:  # SentencePiece's own checks (e.g. more pieces than the corpus can make)
      reason = next((line.strip() for line in str(e).splitlines() if line.strip()), 'RuntimeError')
      reason = reason.split('] ', 1)[-1].rstrip('.')  # drop the C++ assertion that precedes the reason
      raise ConfigError(f'SentencePiece training failed: {reason}: change --vocab_size or the corpus') from None
    print(f'wrote {path} ({args.vocab_size} pieces) in {time.time() - t0:.1f}s')
    return 0

  return cli.guarded('brt-vocab', args.debug, body)


def run() -> None:
  sys.exit(main())
