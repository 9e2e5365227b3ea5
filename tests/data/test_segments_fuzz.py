"""Fuzzing the document batcher (data/segments.py): random document lengths, arguments, documents and
cursors give document-sticky batches that stream every token once per epoch and resume exactly, or one
clear ConfigError line (tests/fuzzing.py)."""

from __future__ import annotations

import json
import math

from hypothesis import example, given, strategies as st
import numpy as np

from fuzzing import attempt, fuzz, make_documents

from block_recurrent.data import segments


@st.composite
def batcher_cases(draw):
  n = draw(st.one_of(st.integers(2, 9), st.sampled_from([16, 64])))
  around = [0, 1, n - 1, n, n + 1, 2 * n - 1, 2 * n, 2 * n + 1]
  length = st.one_of(st.sampled_from(around), st.integers(0, 3 * n), st.integers(10 * n, 30 * n))
  process_count = draw(st.sampled_from([1, 1, 2, 3]))
  return dict(lengths=draw(st.lists(length, max_size=10)), segment_length=n, batch_size=draw(st.integers(1, 5)),
              num_epochs=draw(st.one_of(st.none(), st.integers(1, 3))),
              shuffle_seed=draw(st.one_of(st.none(), st.integers(0, 2**63))), process_count=process_count,
              process_index=draw(st.integers(0, process_count - 1)))


def replay(batches: list[segments.Batch], documents, batch_size: int, segment_length: int,
           finished: bool) -> list[int]:
  """Follows every lane through the batches, checking each row; returns the documents in start order."""
  B, N = batch_size, segment_length
  lane_doc, lane_pos, lane_last = [None] * B, [0] * B, [0] * B
  started, exhausted = [], False
  for batch in batches:
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (B, N)
    assert batch.start_of_sequence.shape == batch.num_bytes.shape == batch.doc_ids.shape == (B,)
    for b in range(B):
      n = int(batch.mask[b].sum())
      assert batch.mask[b, :n].all() and not batch.targets[b, n:].any() and not batch.inputs[b, n:].any()
      doc_id = int(batch.doc_ids[b])
      if doc_id == -1:  # exhausted: only after the lane's document is complete, and for good
        assert lane_doc[b] is None and n == 0 and not batch.start_of_sequence[b] and batch.num_bytes[b] == 0
        exhausted = True
        continue
      if batch.start_of_sequence[b]:
        assert lane_doc[b] is None and not exhausted, 'a start inside a document, or after the supply ended'
        lane_doc[b], lane_pos[b], lane_last[b] = doc_id, 0, 0
        started.append(doc_id)
      assert lane_doc[b] == doc_id, 'a segment without a start, or straddling two documents'
      tokens, num_bytes = documents[doc_id].tokens, documents[doc_id].num_bytes
      pos = lane_pos[b]
      assert n == min(N, len(tokens) - pos) > 0
      np.testing.assert_array_equal(batch.targets[b, :n], tokens[pos:pos + n])
      assert batch.inputs[b, 0] == lane_last[b]  # 0 at a document's start, else the previous target
      np.testing.assert_array_equal(batch.inputs[b, 1:n], batch.targets[b, :n - 1])
      assert batch.num_bytes[b] == num_bytes[pos:pos + n].sum()
      lane_pos[b], lane_last[b] = pos + n, int(batch.targets[b, n - 1])
      if lane_pos[b] == len(tokens):
        lane_doc[b] = None
  if finished:
    assert lane_doc == [None] * B, 'the stream ended inside a document'
  return started


def take(batcher, count: int) -> list[segments.Batch]:
  return [batch for _, batch in zip(range(count), batcher)]  # range first: no batch drawn past count


def assert_same_batches(a: list[segments.Batch], b: list[segments.Batch]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for field in ('inputs', 'targets', 'mask', 'start_of_sequence', 'num_bytes', 'doc_ids'):
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


@fuzz(50)
@given(case=batcher_cases(), seed=st.integers(0, 99), cut=st.floats(0, 1))
@example(case=dict(lengths=[0, 1, 2, 3, 4, 5], segment_length=2, batch_size=3, num_epochs=2, shuffle_seed=None,
                   process_count=1, process_index=0), seed=0, cut=0.5)
@example(case=dict(lengths=[0, 0, 7], segment_length=3, batch_size=1, num_epochs=1, shuffle_seed=3,
                   process_count=2, process_index=1), seed=0, cut=0.0)  # a shard with no text
def test_batcher_streams_every_token_once_per_epoch_and_resumes_exactly(case, seed, cut):
  case = dict(case)
  lengths = case.pop('lengths')
  documents = make_documents(lengths, seed)
  make = lambda: segments.DocumentBatcher(documents, **case)
  B, N, epochs = case['batch_size'], case['segment_length'], case['num_epochs']
  shard = [i for i, n in enumerate(lengths) if n > 0 and i % case['process_count'] == case['process_index']]
  if not shard:
    _, error = attempt(next, make())
    assert error is not None and 'no non-empty document' in str(error)
    return
  # A finite stream to its end; a forever stream for (about) three epochs' worth of batches.
  steps = None if epochs else 3 * math.ceil(sum(lengths[i] for i in shard) / N) + 1
  batcher = make()
  batches = list(batcher) if epochs else take(batcher, steps)
  started = replay(batches, documents, B, N, finished=bool(epochs))
  if epochs:
    assert next(batcher, None) is None
    assert len(started) == epochs * len(shard)
    host = sum(1 for i in range(len(lengths)) if i % case['process_count'] == case['process_index'])
    assert batcher.skipped_empty == epochs * (host - len(shard))
    assert sum(int(b.mask.sum()) for b in batches) == epochs * sum(lengths[i] for i in shard)
    assert sum(int(b.num_bytes.sum()) for b in batches) == epochs * sum(
        int(documents[i].num_bytes.sum()) for i in shard)
  # Each complete epoch starts every document of the shard exactly once (in order without a seed).
  for e in range(len(started) // len(shard)):
    epoch = started[e * len(shard):(e + 1) * len(shard)]
    assert epoch == shard if case['shuffle_seed'] is None else sorted(epoch) == shard
  # A cursor saved after any batch (through JSON) resumes with exactly the batches that follow.
  k = int(cut * len(batches))
  first = make()
  take(first, k)
  cursor = json.loads(json.dumps(first.state()))
  resumed = make()
  resumed.restore(cursor)
  assert_same_batches(list(resumed) if epochs else take(resumed, len(batches) - k), batches[k:])


BAD_BATCHER_ARGUMENTS = {
    'documents': [None, 7],
    'batch_size': [0, -1, 2.0, '2', None, True, np.float64(2)],
    'segment_length': [0, 1, -4, 3.5, '8', None, False],
    'num_epochs': [0, -1, 1.5, '1', True],
    'shuffle_seed': [-1, 0.5, 'seed', True],
    'process_count': [0, -2, 1.0, None],
    'process_index': [-1, 5, 0.0, None],
}


@st.composite
def batcher_arguments(draw):
  """Keyword arguments of DocumentBatcher, up to two of them bad; (arguments, names of the bad ones)."""
  count = draw(st.sampled_from([1, 2, np.int64(3)]))
  arguments = dict(documents=make_documents([3, 2, 5, 1, 0], 0), batch_size=draw(st.integers(1, 3)),
                   segment_length=draw(st.sampled_from([2, 5, np.int32(4)])),
                   num_epochs=draw(st.sampled_from([None, 1, np.int64(2)])),
                   shuffle_seed=draw(st.sampled_from([None, 0, 2**40])), process_count=count,
                   process_index=draw(st.integers(0, int(count) - 1)))
  bad = draw(st.lists(st.sampled_from(sorted(BAD_BATCHER_ARGUMENTS)), max_size=2, unique=True))
  for name in bad:
    arguments[name] = draw(st.sampled_from(BAD_BATCHER_ARGUMENTS[name]))
  return arguments, bad


@fuzz(40)
@given(case=batcher_arguments())
@example(case=(dict(documents=None, batch_size=1, segment_length=2), ['documents']))  # was TypeError (len)
def test_bad_batcher_arguments_are_one_clear_line(case):
  arguments, bad = case
  batcher, error = attempt(lambda: segments.DocumentBatcher(**arguments))
  assert (error is not None) == bool(bad), (bad, error)
  if batcher is not None:
    started = replay(take(batcher, 20), arguments['documents'], arguments['batch_size'],
                     arguments['segment_length'], finished=False)
    assert started and set(started) <= {0, 1, 2, 3}


@fuzz(40)
@given(tokens=st.one_of(st.lists(st.integers(-2, 2**32), max_size=5), st.sampled_from(
           [np.arange(1, 4, dtype=np.uint8), np.array([1.0, 2.0]), np.array([True]), np.array([[1, 2]]),
            np.array(['a', 'b']), np.zeros(0, np.float32), np.array([2**31 - 1]), np.array([2**31])])),
       num_bytes=st.sampled_from(['ones', 'zeros', 'floats', 'negative', 'short', 'huge']),
       doc_id=st.sampled_from([0, 7, np.int64(3), -1, None, 'a', 1.5, True]))
@example(tokens=[1, 2**31], num_bytes='ones', doc_id=0)  # was wrapped to -2**31 by astype(int32)
@example(tokens=[1, 2], num_bytes='floats', doc_id=0)  # was truncated to whole bytes
@example(tokens=[1, 2], num_bytes='ones', doc_id=None)  # was TypeError at the first batch
def test_document_keeps_its_values_or_refuses_them(tokens, num_bytes, doc_id):
  tokens = np.asarray(tokens) if isinstance(tokens, list) else tokens
  size = tokens.shape[-1] if tokens.ndim else 0
  counts = {'ones': np.ones(size, np.int64), 'zeros': np.zeros(size, np.int32),
            'floats': np.full(size, 1.5), 'negative': -np.ones(size, np.int32),
            'short': np.ones(max(size - 1, 0), np.int32), 'huge': np.full(size, 2**40)}[num_bytes]
  if tokens.ndim == 2:
    counts = counts[None]
  document, error = attempt(segments.Document, tokens=tokens, num_bytes=counts, doc_id=doc_id)
  empty = tokens.ndim == 1 and tokens.size == 0  # no ids and no counts that could be wrong
  valid = (tokens.ndim == 1
           and (empty or (np.issubdtype(tokens.dtype, np.integer) and 1 <= tokens.min() and tokens.max() < 2**31
                          and num_bytes in ('ones', 'zeros')))
           and isinstance(doc_id, (int, np.integer)) and not isinstance(doc_id, bool) and doc_id >= 0)
  assert (error is None) == valid, (error, tokens, num_bytes, doc_id)
  if document is not None:
    np.testing.assert_array_equal(document.tokens, tokens)
    np.testing.assert_array_equal(document.num_bytes, counts)
    if len(document):
      batch = next(segments.DocumentBatcher([document], batch_size=1, segment_length=8))
      np.testing.assert_array_equal(batch.targets[0, :len(document)], tokens)
      assert batch.doc_ids[0] == doc_id


@fuzz(40)
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=6).filter(any), steps=st.integers(0, 6),
       path=st.sampled_from(['version', 'epoch', 'position', 'skipped_empty', 'lanes', 'lanes/0', 'lanes/0/0',
                             'lanes/0/1', 'stream', 'stream/num_documents', 'stream/batch_size']),
       value=st.sampled_from([-1, 0, 1, 2, 5, 10**6, 1.5, '1', None, True, [], [1], [-1, 0], {}]))
@example(lengths=[5, 6], steps=0, path='lanes/0', value=[1, 99])  # offset out of range: nothing changes
def test_corrupt_cursor_is_refused_and_changes_nothing_or_resumes(lengths, steps, path, value):
  documents = make_documents(lengths, 1)
  make = lambda: segments.DocumentBatcher(documents, batch_size=2, segment_length=3, num_epochs=2,
                                          shuffle_seed=5)
  batcher = make()
  take(batcher, steps)
  cursor = json.loads(json.dumps(batcher.state()))
  *parents, leaf = path.split('/')
  node = cursor
  for key in parents:
    node = node[int(key)] if isinstance(node, list) else node[key]
  if isinstance(node, list):
    node[int(leaf)] = value
  else:
    node[leaf] = value
  before = batcher.state()
  reference = make()
  take(reference, steps)
  _, error = attempt(batcher.restore, cursor)
  if error is not None:  # refused: the batcher goes on exactly as if restore had not been called
    assert batcher.state() == before
    assert_same_batches(list(batcher), list(reference))
    return
  for _ in range(100):  # accepted: a stream of whole documents (or a clear error), never a crash
    batch, error = attempt(next, batcher, None)
    if batch is None:
      break
