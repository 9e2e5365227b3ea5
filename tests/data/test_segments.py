"""Document-sticky batching: every lane streams whole documents in order, and the cursor resumes exactly."""

from __future__ import annotations

import json
import lzma
import pathlib

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

import block_recurrent
from block_recurrent.configs import ConfigError
from block_recurrent.data.segments import Batch, Document, DocumentBatcher

settings = hypothesis.settings(max_examples=60, deadline=None,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow])

PG_MINI = pathlib.Path(block_recurrent.__file__).parent / 'data' / 'pg_mini'

# Document lengths around the segment lengths drawn below: empty, shorter than, about, and several times
# a segment.
lengths_strategy = st.lists(st.one_of(st.just(0), st.integers(1, 8), st.integers(9, 40)),
                            min_size=1, max_size=10).filter(any)
seed_strategy = st.one_of(st.none(), st.integers(0, 2**32 - 1))


class CountingSource:
  """A lazy source that builds each Document on access and counts the reads."""

  def __init__(self, lengths: list[int], token_seed: int = 0):
    self.lengths = list(lengths)
    self.token_seed = token_seed
    self.reads = [0] * len(lengths)

  def __len__(self) -> int:
    return len(self.lengths)

  def __getitem__(self, i: int) -> Document:
    self.reads[i] += 1
    rng = np.random.default_rng([self.token_seed, i])
    length = self.lengths[i]
    return Document(tokens=rng.integers(1, 1000, length, dtype=np.int32),
                    num_bytes=rng.integers(1, 5, length, dtype=np.int32), doc_id=i)


def expected_order(lengths: list[int], seed: int | None, num_epochs: int, process_index: int = 0,
                   process_count: int = 1) -> list[int]:
  """The documents in hand-out order, straight from the contract."""
  host = [i for i in range(len(lengths)) if i % process_count == process_index]
  order = []
  for epoch in range(num_epochs):
    permutation = (range(len(host)) if seed is None
                   else np.random.default_rng([seed, epoch]).permutation(len(host)))
    order += [host[j] for j in permutation if lengths[host[j]] > 0]
  return order


def check_stream(batches: list[Batch], source, segment_length: int, finished: bool,
                 expected: list[int] | None = None) -> list[tuple[int, np.ndarray]]:
  """Checks every row of a stream of batches; returns (doc_id, concatenated targets) in start order.

  Follows each lane with its doc_id and start flag: a start only where the lane's previous document is
  complete, a continuation only of an incomplete one, every row one document's next min(N, rest) tokens,
  inputs the targets shifted right within the document, exhaustion final and only once the supply is gone.
  """
  documents = {}
  streams: list[tuple[int, list[np.ndarray]]] = []
  N = segment_length
  B = batches[0].targets.shape[0] if batches else 0
  lane_doc: list[Document | None] = [None] * B
  lane_stream: list[list[np.ndarray] | None] = [None] * B
  lane_emitted = [0] * B
  lane_last = [0] * B
  exhausted = [False] * B
  for batch in batches:
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (B, N)
    assert batch.start_of_sequence.shape == batch.num_bytes.shape == batch.doc_ids.shape == (B,)
    assert batch.inputs.dtype == batch.targets.dtype == np.int32
    assert batch.mask.dtype == batch.start_of_sequence.dtype == bool
    assert batch.num_bytes.dtype == batch.doc_ids.dtype == np.int64
    for b in range(B):
      n = int(batch.mask[b].sum())
      assert batch.mask[b, :n].all() and not batch.mask[b, n:].any(), 'mask is not a prefix'
      assert not batch.targets[b, n:].any() and not batch.inputs[b, n:].any(), 'padding is not 0'
      doc_id = int(batch.doc_ids[b])
      if doc_id == -1:
        assert lane_doc[b] is None, 'a lane was exhausted in the middle of a document'
        assert n == 0 and not batch.start_of_sequence[b] and batch.num_bytes[b] == 0
        exhausted[b] = True
        continue
      assert not exhausted[b], 'an exhausted lane came back'
      if doc_id not in documents:
        documents[doc_id] = source[doc_id]
      document = documents[doc_id]
      if batch.start_of_sequence[b]:
        assert lane_doc[b] is None, 'start_of_sequence before the previous document was complete'
        lane_doc[b], lane_emitted[b], lane_last[b] = document, 0, 0
        lane_stream[b] = []
        streams.append((doc_id, lane_stream[b]))
      else:
        assert lane_doc[b] is not None and lane_doc[b].doc_id == doc_id, 'segment straddles documents'
      emitted = lane_emitted[b]
      assert n == min(N, len(document) - emitted) > 0
      np.testing.assert_array_equal(batch.targets[b, :n], document.tokens[emitted:emitted + n])
      assert batch.inputs[b, 0] == lane_last[b]
      np.testing.assert_array_equal(batch.inputs[b, 1:n], batch.targets[b, :n - 1])
      assert batch.num_bytes[b] == document.num_bytes[emitted:emitted + n].sum()
      lane_stream[b].append(batch.targets[b, :n])
      lane_emitted[b] += n
      lane_last[b] = int(batch.targets[b, n - 1])
      if lane_emitted[b] == len(document):
        lane_doc[b] = None
    if expected is not None and any(exhausted):
      assert len(streams) == len(expected), 'a lane was exhausted while documents were left'
  if finished:
    assert all(document is None for document in lane_doc), 'the stream ended inside a document'
  if expected is not None:
    started = [doc_id for doc_id, _ in streams]
    assert started == (expected if finished else expected[:len(started)])
  return [(doc_id, np.concatenate(pieces)) for doc_id, pieces in streams]


def assert_batches_equal(a: Batch, b: Batch) -> None:
  for field in ('inputs', 'targets', 'mask', 'start_of_sequence', 'num_bytes', 'doc_ids'):
    x, y = getattr(a, field), getattr(b, field)
    assert x.dtype == y.dtype, field
    np.testing.assert_array_equal(x, y, err_msg=field)


def take(iterator, count: int) -> list[Batch]:
  batches = []
  if count <= 0:
    return batches
  for batch in iterator:
    batches.append(batch)
    if len(batches) == count:
      break
  return batches


@settings
@hypothesis.given(lengths=lengths_strategy, batch_size=st.integers(1, 4), segment_length=st.integers(2, 8),
                  seed=seed_strategy, num_epochs=st.integers(1, 3), token_seed=st.integers(0, 100))
def test_stream_reproduces_every_document(lengths, batch_size, segment_length, seed, num_epochs, token_seed):
  source = CountingSource(lengths, token_seed)
  batcher = DocumentBatcher(source, batch_size=batch_size, segment_length=segment_length,
                            shuffle_seed=seed, num_epochs=num_epochs)
  batches = list(batcher)
  with pytest.raises(StopIteration):
    next(batcher)
  reads = list(source.reads)
  order = expected_order(lengths, seed, num_epochs)
  streams = check_stream(batches, source, segment_length, finished=True, expected=order)
  for doc_id, tokens in streams:
    np.testing.assert_array_equal(tokens, source[doc_id].tokens)
  # Every non-empty document exactly once per epoch; the empty ones skipped and counted.
  assert sorted(doc_id for doc_id, _ in streams) == sorted(
      i for i, length in enumerate(lengths) if length > 0 for _ in range(num_epochs))
  assert batcher.skipped_empty == num_epochs * lengths.count(0)
  total_bytes = sum(int(source[i].num_bytes.sum()) for i in range(len(lengths)))
  assert sum(int(batch.num_bytes.sum()) for batch in batches) == num_epochs * total_bytes
  # Each document is read once when a lane takes it, not once per segment.
  assert reads == [num_epochs] * len(lengths)


@settings
@hypothesis.given(lengths=lengths_strategy, batch_size=st.integers(1, 4), segment_length=st.integers(2, 8),
                  seed=seed_strategy, token_seed=st.integers(0, 100))
def test_repeats_forever_without_num_epochs(lengths, batch_size, segment_length, seed, token_seed):
  source = CountingSource(lengths, token_seed)
  batcher = DocumentBatcher(source, batch_size=batch_size, segment_length=segment_length,
                            shuffle_seed=seed, num_epochs=None)
  one_epoch = len(list(DocumentBatcher(source, batch_size=batch_size, segment_length=segment_length,
                                       shuffle_seed=seed)))
  batches = take(batcher, 3 * one_epoch + 1)
  assert len(batches) == 3 * one_epoch + 1
  assert all((batch.doc_ids >= 0).all() for batch in batches), 'a lane was exhausted without num_epochs'
  non_empty = sum(length > 0 for length in lengths)
  epochs = len(batches) * batch_size // non_empty + 1  # more than the rows can start
  streams = check_stream(batches, source, segment_length, finished=False,
                         expected=expected_order(lengths, seed, epochs))
  # Lanes are never idle, so more steps than 3 finite epochs take stream more than 3 epochs' documents.
  assert len(streams) > 3 * non_empty


@settings
@hypothesis.given(lengths=lengths_strategy, batch_size=st.integers(1, 4), segment_length=st.integers(2, 8),
                  seed=seed_strategy, num_epochs=st.one_of(st.none(), st.integers(1, 2)),
                  cut=st.floats(0.0, 1.0), token_seed=st.integers(0, 100))
def test_restored_cursor_continues_exactly(lengths, batch_size, segment_length, seed, num_epochs, cut,
                                           token_seed):
  source = CountingSource(lengths, token_seed)

  def make():
    return DocumentBatcher(source, batch_size=batch_size, segment_length=segment_length,
                           shuffle_seed=seed, num_epochs=num_epochs)

  limit = 2 * len(list(DocumentBatcher(source, batch_size=batch_size, segment_length=segment_length)))
  k = int(round(cut * limit))
  original = make()
  take(original, k)
  state = json.loads(json.dumps(original.state()))
  assert len(json.dumps(state)) < 400 + 30 * batch_size, 'the cursor must stay small'
  expected = take(original, 100)
  restored = make()
  restored.restore(state)
  actual = take(restored, 100)
  assert len(actual) == len(expected)
  for a, b in zip(actual, expected):
    assert_batches_equal(a, b)
  assert restored.skipped_empty == original.skipped_empty
  if len(expected) < 100:  # both ended
    with pytest.raises(StopIteration):
      next(restored)
  # Restoring rewinds a used batcher too.
  original.restore(state)
  for a, b in zip(take(original, 100), expected):
    assert_batches_equal(a, b)


@settings
@hypothesis.given(lengths=st.lists(st.integers(0, 20), min_size=1, max_size=12),
                  process_count=st.integers(2, 3), seed=seed_strategy)
def test_process_shards_are_disjoint_and_cover_the_source(lengths, process_count, seed):
  source = CountingSource(lengths)
  seen = []
  for process_index in range(process_count):
    batcher = DocumentBatcher(source, batch_size=2, segment_length=5, shuffle_seed=seed,
                              process_index=process_index, process_count=process_count)
    if not any(lengths[process_index::process_count]):
      with pytest.raises(ConfigError, match='no non-empty document'):
        next(batcher)
      continue
    batches = list(batcher)
    streams = check_stream(batches, source, 5, finished=True,
                           expected=expected_order(lengths, seed, 1, process_index, process_count))
    ids = [doc_id for doc_id, _ in streams]
    assert all(i % process_count == process_index for i in ids)
    seen += ids
  assert sorted(seen) == [i for i, length in enumerate(lengths) if length > 0]


def test_shuffle_seeds_give_different_orders_and_the_same_seed_the_same():
  lengths = [int(n) for n in np.random.default_rng(0).integers(1, 30, 40)]
  source = CountingSource(lengths)

  def run(seed, num_epochs=1):
    return list(DocumentBatcher(source, batch_size=3, segment_length=7, shuffle_seed=seed,
                                num_epochs=num_epochs))

  def order(batches):
    return [int(b.doc_ids[i]) for b in batches for i in np.flatnonzero(b.start_of_sequence)]

  first, again, other = run(1), run(1), run(2)
  assert len(first) == len(again)
  for a, b in zip(first, again):
    assert_batches_equal(a, b)
  assert order(first) != order(other)
  assert sorted(order(first)) == sorted(order(other)) == list(range(40))
  assert order(run(None)) == list(range(40))
  two_epochs = order(run(1, num_epochs=2))
  assert two_epochs[:40] == order(first) and two_epochs[40:] != two_epochs[:40]


def test_hand_out_order_fills_lanes_in_lane_order():
  # Lengths 3, 9, 0, 2, 4 in segments of 4 over 2 lanes: lane 0 takes doc 0 and lane 1 doc 1; lane 0 is
  # done after step 0, skips the empty doc 2 and takes doc 3 at step 1, then doc 4 at step 2, while lane 1
  # streams doc 1 over all three steps.
  source = CountingSource([3, 9, 0, 2, 4])
  batcher = DocumentBatcher(source, batch_size=2, segment_length=4)
  batches = list(batcher)
  np.testing.assert_array_equal([b.doc_ids for b in batches], [[0, 1], [3, 1], [4, 1]])
  np.testing.assert_array_equal([b.start_of_sequence for b in batches], [[1, 1], [1, 0], [1, 0]])
  np.testing.assert_array_equal(batches[0].inputs[0], [0, *source[0].tokens[:2], 0])
  np.testing.assert_array_equal(batches[1].inputs[1], source[1].tokens[3:7])
  np.testing.assert_array_equal(batches[2].mask[1], [1, 0, 0, 0])
  assert batcher.skipped_empty == 1


def test_exhausted_lanes_are_padding_until_all_are_done():
  source = CountingSource([10, 2])
  batches = list(DocumentBatcher(source, batch_size=3, segment_length=4))
  np.testing.assert_array_equal([b.doc_ids for b in batches], [[0, 1, -1], [0, -1, -1], [0, -1, -1]])
  for batch in batches:
    row = batch.doc_ids == -1
    assert not batch.targets[row].any() and not batch.inputs[row].any() and not batch.mask[row].any()
    assert not batch.start_of_sequence[row].any() and not batch.num_bytes[row].any()
  check_stream(batches, source, 4, finished=True, expected=[0, 1])


@pytest.mark.parametrize('kwargs, match', [
    (dict(batch_size=2, segment_length=1), 'segment_length must be at least 2'),
    (dict(batch_size=0, segment_length=4), 'batch_size must be at least 1'),
    (dict(batch_size=2, segment_length=4, process_index=2, process_count=2),
     'process_index 2 is out of range'),
    (dict(batch_size=2, segment_length=4, process_index=-1), 'process_index -1 is out of range'),
    (dict(batch_size=2, segment_length=4, num_epochs=0), 'num_epochs must be None'),
    (dict(batch_size=2, segment_length=4, shuffle_seed=-3), 'shuffle_seed must be None'),
])
def test_bad_arguments_raise_one_line(kwargs, match):
  with pytest.raises(ConfigError, match=match) as info:
    DocumentBatcher(CountingSource([5, 6]), **kwargs)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('lengths, num_epochs', [([0, 0, 0], 1), ([0], None), ([], 1)])
def test_source_without_text_raises_when_iteration_starts(lengths, num_epochs):
  batcher = DocumentBatcher(CountingSource(lengths), batch_size=2, segment_length=4, num_epochs=num_epochs)
  with pytest.raises(ConfigError, match='no non-empty document') as info:
    next(iter(batcher))
  assert '\n' not in str(info.value)


def test_bad_documents_and_cursors_raise_one_line():
  for tokens, num_bytes, match in [([1, 0, 2], [1, 1, 1], 'must be >= 1'),
                                   ([1, 2], [1], 'one byte count per token'),
                                   ([[1, 2]], [[1, 1]], 'must be 1-D')]:
    with pytest.raises(ConfigError, match=match) as info:
      Document(tokens=np.array(tokens), num_bytes=np.array(num_bytes), doc_id=7)
    assert '\n' not in str(info.value)
  source = CountingSource([5, 6, 7])
  batcher = DocumentBatcher(source, batch_size=2, segment_length=4)
  next(batcher)
  state = batcher.state()
  with pytest.raises(ConfigError, match='same arguments') as info:
    DocumentBatcher(source, batch_size=3, segment_length=4).restore(state)
  assert '\n' not in str(info.value)
  with pytest.raises(ConfigError, match='state\\(\\) returned'):
    DocumentBatcher(source, batch_size=2, segment_length=4).restore({'version': 99})
  with pytest.raises(ConfigError, match='not a Document'):
    next(DocumentBatcher([np.arange(1, 5)], batch_size=1, segment_length=4))


def read_books(*splits: str) -> list[tuple[str, str]]:
  books = []
  for split in splits:
    for path in sorted((PG_MINI / split).glob('*.txt.xz')):
      books.append((path.name, lzma.decompress(path.read_bytes()).decode('utf-8')))
  return books


def test_real_books_are_reproduced_byte_for_byte():
  books = read_books('validation', 'test')
  assert len(books) == 3
  documents = []
  for i, (_, text) in enumerate(books):
    data = np.frombuffer(text.encode('utf-8'), np.uint8)
    documents.append(Document(tokens=data.astype(np.int32) + 4, num_bytes=np.ones(data.size, np.int32),
                              doc_id=i))
  batcher = DocumentBatcher(documents, batch_size=2, segment_length=4096)
  batches = list(batcher)
  streams = check_stream(batches, documents, 4096, finished=True, expected=[0, 1, 2])
  assert len(streams) == 3
  for doc_id, tokens in streams:
    name, text = books[doc_id]
    assert (tokens - 4).astype(np.uint8).tobytes().decode('utf-8') == text, name
  assert sum(int(b.num_bytes.sum()) for b in batches) == sum(len(t.encode('utf-8')) for _, t in books)
  assert sum(int(b.mask.sum()) for b in batches) == sum(d.tokens.size for d in documents)
