"""Vocabularies: bytes, and lossless SentencePiece models trained offline by `brt-vocab`.

Lossless means decode(encode(text)) == text for any UTF-8 text: no normalisation, no dummy prefix, no
whitespace folding, and byte fallback for characters the pieces do not cover. Ids follow T5: pad 0,
eos 1, unk 2. Every piece also has an exact UTF-8 byte length, so bits per byte are honest for any
tokenizer (`piece_num_bytes`).
"""

from __future__ import annotations

import io
import pathlib
import re
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
