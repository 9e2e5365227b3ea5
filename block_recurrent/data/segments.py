"""Document-sticky batching: each batch row ("lane") streams one document in order, segment by segment.

A recurrent model carries its state from one training step to the next, so it can learn long-range
structure only if row b of step t+1 continues the text that row b of step t ended with. The usual
"concatenate everything and chop" pipeline breaks that: a row jumps between unrelated documents and the
state it carries is noise. Here every lane holds one document until it is used up, a segment never
straddles two documents (the last one is 0-padded and masked), and `start_of_sequence` tells the model
when to clear the lane's state.

The batcher is pure numpy so that it can be tested exhaustively and run in any input pipeline. Its cursor
(`state()` / `restore()`) is a handful of integers: the permutation of each epoch is re-derived from the
seed, and the document of each lane is re-read from the source, so a checkpoint never holds token arrays
(only each lane's document name and size, so that a changed source is named instead of continued).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterator, Sequence

import numpy as np

from block_recurrent.errors import check as _check, is_int

_is_int = functools.partial(is_int, numpy=True)  # documents and cursors hold NumPy integers too
_STATE_VERSION = 1
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True, eq=False)
class Document:
  """One tokenised document of the source.

  Attributes:
    tokens: int32 [L] token ids, all >= 1 (0 is the padding id, so a real token can never look like one).
    num_bytes: int32 [L] UTF-8 bytes each token stands for (>= 0); all ones for a byte vocabulary. Carried so
      that bits-per-byte can be computed for any vocabulary.
    doc_id: the document's stable index (>= 0) in the source, reported back in `Batch.doc_ids`.
    name: what the source calls it (a file path), for the fingerprint and messages; None if nothing.
  """

  tokens: np.ndarray
  num_bytes: np.ndarray
  doc_id: int
  name: str | None = None

  def __post_init__(self):
    # eq=False: numpy fields make the generated __eq__/__hash__ meaningless (and raise on use).
    tokens_L = np.asarray(self.tokens)
    num_bytes_L = np.asarray(self.num_bytes)
    _check(tokens_L.ndim == 1, f'Document {self.doc_id}: tokens must be 1-D, got shape {tokens_L.shape}')
    _check(num_bytes_L.shape == tokens_L.shape,
           f'Document {self.doc_id}: num_bytes has shape {num_bytes_L.shape} but tokens has shape '
           f'{tokens_L.shape}: give one byte count per token')
    _check(tokens_L.size == 0 or np.issubdtype(tokens_L.dtype, np.integer),
           f'Document {self.doc_id}: tokens must be integers, got dtype {tokens_L.dtype}')
    smallest = int(tokens_L.min()) if tokens_L.size else 1
    _check(smallest >= 1, f'Document {self.doc_id}: token ids must be >= 1 (0 is padding), got {smallest}')
    largest = int(tokens_L.max()) if tokens_L.size else 1
    _check(largest <= _INT32_MAX, f'Document {self.doc_id}: token id {largest} does not fit in int32: '
           'use a vocabulary of fewer than 2**31 ids')
    if num_bytes_L.size:
      whole = np.issubdtype(num_bytes_L.dtype, np.integer)
      _check(whole and 0 <= num_bytes_L.min() and num_bytes_L.max() <= _INT32_MAX,
             f'Document {self.doc_id}: num_bytes must be whole byte counts in [0, 2**31), got '
             + (f'{num_bytes_L.min()} .. {num_bytes_L.max()}' if whole else f'dtype {num_bytes_L.dtype}'))
    _check(_is_int(self.doc_id) and self.doc_id >= 0,
           f'Document doc_id must be a non-negative integer (its index in the source), got {self.doc_id!r}')
    _check(self.name is None or isinstance(self.name, str),
           f'Document {self.doc_id}: name must be None or a string, got {self.name!r}')
    object.__setattr__(self, 'tokens', tokens_L.astype(np.int32, copy=False))
    object.__setattr__(self, 'num_bytes', num_bytes_L.astype(np.int32, copy=False))

  def __len__(self) -> int:
    return int(self.tokens.shape[0])

  @functools.cached_property
  def _size(self) -> int:  # summed once, not at every checkpoint
    return int(self.num_bytes.sum(dtype=np.int64))

  def identity(self) -> list:
    """[name, bytes]: what a cursor records of each lane's document, to name it if the source changed."""
    return [self.name, self._size]


def _describe(document_id: int, then: Sequence, now: Document | None) -> str:
  """How document `document_id` differs from the [name, bytes] a cursor recorded of it (one phrase)."""
  name, size = then
  was = f"'{name}' ({size} bytes)" if name is not None else f'{size} bytes long'
  if now is None:
    return f'document {document_id} was {was}, now there is none'
  if name is not None and name == now.name:
    return f"document {document_id} ('{name}') had {size} bytes, now {now.identity()[1]}"
  new_name, new_size = now.identity()
  return f"document {document_id} was {was}, now " + (
      f"'{new_name}' ({new_size} bytes)" if new_name is not None else f'{new_size} bytes long')


def lane_change(state: dict[str, Any], documents: Sequence[Document]) -> str | None:
  """The first lane of a cursor whose document is not the one it was streaming, described; else None.

  Cursors written before lanes recorded their documents (and malformed ones) give None.
  """
  if not isinstance(state, dict):
    return None
  lanes, recorded = state.get('lanes'), state.get('lane_documents')
  if not isinstance(lanes, list) or not isinstance(recorded, list):
    return None
  for lane, then in zip(lanes, recorded):
    if not (isinstance(lane, (list, tuple)) and len(lane) == 2 and _is_int(lane[0]) and lane[0] >= 0
            and isinstance(then, (list, tuple)) and len(then) == 2):
      continue
    index = int(lane[0])
    now = documents[index] if index < len(documents) else None
    if now is None or not isinstance(now, Document) or now.identity() != list(then):
      document_id = now.doc_id if isinstance(now, Document) else index
      return _describe(document_id, then, now if isinstance(now, Document) else None)
  return None


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
  """One training step's worth of segments, row b continuing the document row b held at the last step.

  Attributes:
    inputs: int32 [B, N] targets shifted right by one within the document: the first input of a document
      is 0 (BOS = the pad id) and the first input of a later segment is the previous segment's last target,
      so the model sees every (context, next token) pair of the document exactly once.
    targets: int32 [B, N] the next N tokens of each lane's document, 0-padded at the document's end.
    mask: bool [B, N] True where targets is a real token.
    start_of_sequence: bool [B] True iff the row is the first segment of a document (clear the state).
    num_bytes: int64 [B] UTF-8 bytes of the real targets of each row.
    doc_ids: int64 [B] the doc_id streaming in each lane, -1 for an exhausted lane.
  """

  inputs: np.ndarray
  targets: np.ndarray
  mask: np.ndarray
  start_of_sequence: np.ndarray
  num_bytes: np.ndarray
  doc_ids: np.ndarray


class DocumentBatcher:
  """Streams documents into `batch_size` lanes, `segment_length` tokens per lane per step.

  Documents are handed out in a per-epoch order (a permutation from `np.random.default_rng([shuffle_seed,
  epoch])`, or the natural order) to lanes as lanes become free, lowest lane first. A lane that finishes
  its document takes the next one at the next step; when the orders of all `num_epochs` epochs are used up
  the lane is exhausted (an all-padding row with doc_id -1) and iteration ends once every lane is.
  `num_epochs=None` repeats forever.

  Each process of a multi-host job sees only the documents with source index
  `i % process_count == process_index`, so the shards are disjoint and together cover the source.

  `documents` is anything with `__len__` and `__getitem__` returning a `Document` (a list, or a lazy
  reader). Each document is read once when a lane takes it and cached in the lane until it is used up.

  `source` is JSON that says where the documents came from (a task, a folder, their `fingerprint`): the
  cursor carries it unchanged for the caller to compare before `restore()`, which does not look at it.
  """

  def __init__(self, documents: Sequence[Document], *, batch_size: int, segment_length: int,
               shuffle_seed: int | None = None, num_epochs: int | None = 1, process_index: int = 0,
               process_count: int = 1, source: dict[str, Any] | None = None):
    _check(_is_int(batch_size) and batch_size >= 1, f'batch_size must be at least 1, got {batch_size!r}')
    _check(_is_int(segment_length) and segment_length >= 2,
           f'segment_length must be at least 2 (one target and its input), got {segment_length!r}')
    _check(_is_int(process_count) and process_count >= 1,
           f'process_count must be at least 1, got {process_count!r}')
    _check(_is_int(process_index) and 0 <= process_index < process_count,
           f'process_index {process_index!r} is out of range: use 0 <= process_index < process_count '
           f'({process_count})')
    _check(num_epochs is None or (_is_int(num_epochs) and num_epochs >= 1),
           f'num_epochs must be None (repeat forever) or at least 1, got {num_epochs!r}')
    _check(shuffle_seed is None or (_is_int(shuffle_seed) and shuffle_seed >= 0),
           f'shuffle_seed must be None (natural order) or a non-negative integer, got {shuffle_seed!r}')
    _check(hasattr(documents, '__len__') and hasattr(documents, '__getitem__'),
           f'documents must be a sequence of Document (a list, or an object with __len__ and __getitem__), '
           f'got {type(documents).__name__}')
    self._documents = documents
    self._source = source
    self._batch_size = int(batch_size)
    self._segment_length = int(segment_length)
    self._shuffle_seed = None if shuffle_seed is None else int(shuffle_seed)
    self._num_epochs = None if num_epochs is None else int(num_epochs)
    self._process_index = int(process_index)
    self._process_count = int(process_count)
    self._num_documents = len(documents)
    # This host's documents: source indices process_index, process_index + process_count, ...
    self._num_host = len(range(self._process_index, self._num_documents, self._process_count))
    self._reset(epoch=0, position=0, lanes=[(-1, 0)] * self._batch_size, skipped_empty=0)

  # --- cursor ---------------------------------------------------------------------------------------

  def _reset(self, *, epoch: int, position: int, lanes: Sequence[tuple[int, int]], skipped_empty: int):
    """Sets the cursor; the order and the lanes' documents are re-derived, never stored. A cursor that
    does not fit the source raises before anything changes."""
    loaded = [None if index < 0 else self._load(index) for index, _ in lanes]
    for lane, ((index, offset), document) in enumerate(zip(lanes, loaded)):
      _check(document is None or 0 <= offset < len(document),
             f'cursor lane {lane}: offset {offset} is outside document {index} of length '
             f'{len(document) if document is not None else 0}: restore a cursor saved from the same source')
    self._epoch = epoch
    self._position = position  # next position in this epoch's order
    self._order_epoch = -1  # epoch whose order is cached in self._order
    self._order = np.zeros(0, np.int64)
    # Whether this epoch has handed out a non-empty document; an epoch that has not by its end means this
    # host's shard holds only empty documents. Mid-epoch after a restore it is unknown, so assume yes.
    self._epoch_has_document = position > 0
    self.skipped_empty = skipped_empty
    self._lane_index = [-1] * self._batch_size  # source index of each lane's document, -1 when free
    self._lane_offset = [0] * self._batch_size  # tokens of it already emitted as targets
    self._lane_doc: list[Document | None] = [None] * self._batch_size
    for lane, ((index, offset), document) in enumerate(zip(lanes, loaded)):
      if document is not None:
        self._lane_index[lane], self._lane_offset[lane], self._lane_doc[lane] = index, offset, document

  def state(self) -> dict[str, Any]:
    """A JSON-serialisable cursor: exactly where every lane is, plus the arguments that define the stream.

    Restoring it into a batcher built with the same arguments continues with exactly the batches this
    one would yield next. It holds only small integers; orders and documents are re-derived on restore.
    """
    return {
        'version': _STATE_VERSION,
        'epoch': self._epoch,
        'position': self._position,
        'lanes': [[index, offset] for index, offset in zip(self._lane_index, self._lane_offset)],
        'skipped_empty': self.skipped_empty,
        # Checked on restore: a cursor only means something for the same stream.
        'stream': self._stream_arguments(),
        # Checked on restore: a lane continues the very document it was streaming, not one at its index.
        'lane_documents': [None if document is None else document.identity() for document in self._lane_doc],
        **({} if self._source is None else {'source': self._source}),
    }

  def restore(self, state: dict[str, Any]) -> None:
    """Continues from a cursor saved by `state()` of a batcher built with the same arguments.

    num_epochs may differ (to extend a run); everything that determines the order of the stream may not.
    """
    _check(isinstance(state, dict) and state.get('version') == _STATE_VERSION,
           f'not a DocumentBatcher cursor of version {_STATE_VERSION}: pass what state() returned')
    saved, current = state.get('stream'), self._stream_arguments()
    _check(isinstance(saved, dict) and set(saved) == set(current),
           f'cursor stream {saved!r} is not a DocumentBatcher stream: pass what state() returned')
    for key, value in current.items():
      _check(saved[key] == value, f'cursor was saved with {key}={saved[key]!r}, this batcher has {key}={value!r}: '
             'build the batcher with the same arguments')
    epoch, position, lanes = state.get('epoch'), state.get('position'), state.get('lanes')
    skipped = state.get('skipped_empty')
    _check(_is_int(epoch) and epoch >= 0 and _is_int(position) and 0 <= position <= self._num_host
           and _is_int(skipped) and skipped >= 0,
           f'cursor epoch={epoch!r} position={position!r} skipped_empty={skipped!r} is out of range for '
           f'{self._num_host} documents on this host: pass what state() returned')
    _check(isinstance(lanes, list) and len(lanes) == self._batch_size
           and all(isinstance(lane, (list, tuple)) and len(lane) == 2 and all(map(_is_int, lane))
                   for lane in lanes),
           f'cursor lanes must be {self._batch_size} [index, offset] pairs: pass what state() returned')
    for index, _ in lanes:
      _check(index == -1 or (0 <= index < self._num_documents
                             and index % self._process_count == self._process_index),
             f'cursor names document {index}, which is not in the shard of process {self._process_index} '
             f'of {self._process_count}: restore the cursor this process saved')
    recorded = state.get('lane_documents')  # absent from cursors written before it was recorded
    _check(recorded is None or (isinstance(recorded, list) and len(recorded) == self._batch_size and all(
        then is None or (isinstance(then, (list, tuple)) and len(then) == 2 and (then[0] is None or isinstance(
            then[0], str)) and _is_int(then[1])) for then in recorded)),
           f'cursor lane_documents must be {self._batch_size} [name, bytes] pairs or nulls: pass what state() '
           'returned')
    change = lane_change(state, self._documents)
    _check(change is None, f'cursor {change}: restore a cursor saved from the same source')
    self._reset(epoch=int(epoch), position=int(position),
                lanes=[(int(index), int(offset)) for index, offset in lanes], skipped_empty=int(skipped))

  def _stream_arguments(self) -> dict[str, Any]:
    return {
        'batch_size': self._batch_size,
        'segment_length': self._segment_length,
        'shuffle_seed': self._shuffle_seed,
        'process_index': self._process_index,
        'process_count': self._process_count,
        'num_documents': self._num_documents,
    }

  # --- hand-out --------------------------------------------------------------------------------------

  def _load(self, index: int) -> Document:
    document = self._documents[index]
    _check(isinstance(document, Document),
           f'documents[{index}] is a {type(document).__name__}, not a Document: '
           'make the source return block_recurrent.data.segments.Document')
    return document

  def _order_of(self, epoch: int) -> np.ndarray:
    """This host's positions 0..num_host-1 in the hand-out order of `epoch` (cached for one epoch)."""
    if self._order_epoch != epoch:
      if self._shuffle_seed is None:
        self._order = np.arange(self._num_host)
      else:
        self._order = np.random.default_rng([self._shuffle_seed, epoch]).permutation(self._num_host)
      self._order_epoch = epoch
    return self._order

  def _next_document(self) -> tuple[int, Document] | None:
    """The next non-empty document of the order (starting further epochs as allowed), or None when none."""
    while True:
      if self._num_epochs is not None and self._epoch >= self._num_epochs:
        return None
      if self._position >= self._num_host:
        _check(self._epoch_has_document,
               f'process {self._process_index} of {self._process_count} has no non-empty document among '
               f'its {self._num_host} of the {self._num_documents} in the source: give it some text')
        if self._num_epochs is not None and self._epoch + 1 >= self._num_epochs:
          return None
        self._epoch += 1
        self._position = 0
        self._epoch_has_document = False
        continue
      host_position = int(self._order_of(self._epoch)[self._position])
      self._position += 1
      index = self._process_index + host_position * self._process_count
      document = self._load(index)
      if len(document) == 0:
        self.skipped_empty += 1
        continue
      self._epoch_has_document = True
      return index, document

  # --- iteration -------------------------------------------------------------------------------------

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    B, N = self._batch_size, self._segment_length
    # Free lanes take the next documents, lowest lane first. Once the supply is gone they stay free, so a
    # free lane after this loop is an exhausted one.
    for lane in range(B):
      if self._lane_doc[lane] is None:
        drawn = self._next_document()
        if drawn is None:
          break
        self._lane_index[lane], self._lane_doc[lane] = drawn
        self._lane_offset[lane] = 0
    if all(document is None for document in self._lane_doc):
      raise StopIteration

    inputs_BxN = np.zeros((B, N), np.int32)
    targets_BxN = np.zeros((B, N), np.int32)
    mask_BxN = np.zeros((B, N), bool)
    start_B = np.zeros(B, bool)
    num_bytes_B = np.zeros(B, np.int64)
    doc_ids_B = np.full(B, -1, np.int64)
    for lane in range(B):
      document = self._lane_doc[lane]
      if document is None:
        continue
      offset = self._lane_offset[lane]
      length = len(document)
      end = min(offset + N, length)
      n = end - offset
      targets_BxN[lane, :n] = document.tokens[offset:end]
      if offset > 0:
        inputs_BxN[lane, 0] = document.tokens[offset - 1]
      inputs_BxN[lane, 1:n] = document.tokens[offset:end - 1]
      mask_BxN[lane, :n] = True
      start_B[lane] = offset == 0
      num_bytes_B[lane] = document.num_bytes[offset:end].sum(dtype=np.int64)
      doc_ids_B[lane] = document.doc_id
      if end >= length:  # used up: the lane takes a new document at the next step
        self._lane_index[lane], self._lane_offset[lane], self._lane_doc[lane] = -1, 0, None
      else:
        self._lane_offset[lane] = end
    return Batch(inputs=inputs_BxN, targets=targets_BxN, mask=mask_BxN, start_of_sequence=start_B,
                 num_bytes=num_bytes_B, doc_ids=doc_ids_B)
