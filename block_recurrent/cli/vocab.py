"""`brt-vocab`: trains a lossless SentencePiece vocabulary offline on a corpus's train split.

    brt-vocab --task=pg_mini --vocab_size=8000 --output=vocabs/pg_mini_8k   # writes PREFIX.model, PREFIX.vocab
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from block_recurrent import configs, errors
from block_recurrent.cli import contract
from block_recurrent.data import vocab


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='brt-vocab', description='Train a lossless SentencePiece vocabulary '
                                   "offline on a corpus's train split.")
  parser.add_argument('--task', default='pg_mini',
                      help='a corpus (pg_mini, pg19, arxiv, github, text_folder) or a task such as pg19_tokens')
  parser.add_argument('--data_dir', default=None, help='the corpus folder (not needed for pg_mini)')
  parser.add_argument('--vocab_size', type=int, default=8000)
  parser.add_argument('--output', required=True, help='model prefix: writes PREFIX.model and PREFIX.vocab')
  contract.add_debug_flag(parser)
  args = parser.parse_args(argv)

  def body() -> int:
    from block_recurrent.data import tasks  # the seqio/TensorFlow import, only when the command runs
    t0 = time.time()
    corpus_name = args.task.removesuffix('_bytes').removesuffix('_tokens')
    if corpus_name not in tasks.CORPORA:
      raise configs.ConfigError(f'--task {args.task!r} is not a corpus: choose one of {", ".join(tasks.CORPORA)}')
    if args.vocab_size < 260:  # before the corpus is read
      raise configs.ConfigError(f'--vocab_size {args.vocab_size} is too small: a lossless model needs >= 260 '
                        '(256 byte pieces)')
    if args.vocab_size > 2 ** 20:  # 32-bit in SentencePiece; 2**31 - 1 ran over 10 minutes on PG-mini
      raise configs.ConfigError(f'--vocab_size {args.vocab_size} is too large: give at most {2 ** 20} pieces '
                        '(large models use 32000 to 256000)')
    if args.data_dir == '':  # an empty folder name would read the current folder as the corpus
      raise configs.ConfigError('--data_dir is empty: give the corpus folder, or leave it out for pg_mini')
    output = pathlib.Path(args.output)
    if output.name in ('', '.', '..') or output.is_dir():
      raise configs.ConfigError(f'--output {args.output} is a folder: give a file prefix such as {output / "vocab"}')
    try:
      output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise errors.IOFailure(f'cannot create the folder of --output {args.output}: {e.strerror}') from None
    texts = tasks.texts(corpus_name, 'train', args.data_dir)
    try:
      path = vocab.train_sentencepiece(texts, args.vocab_size, args.output)
    except RuntimeError as e:  # SentencePiece's own checks (e.g. more pieces than the corpus can make)
      reason = errors.one_line(e, 1)
      reason = reason.split('] ', 1)[-1].rstrip('.')  # drop the C++ assertion that precedes the reason
      raise configs.ConfigError(f'SentencePiece training failed: {reason}: change --vocab_size or the corpus') from None
    print(f'wrote {path} ({args.vocab_size} pieces) in {time.time() - t0:.1f}s')
    return 0

  return contract.guarded('brt-vocab', args.debug, body)


def run() -> None:
  sys.exit(main())
