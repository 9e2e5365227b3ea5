"""Text generation with the recurrent state live: prefill the prompt, then decode token by token.

    import block_recurrent as brt
    text = brt.generate(model, params, 'It was a dark and stormy night', max_new_tokens=200,
                        temperature=0.8, top_p=0.95, seed=0)

A document's first input is 0 (the id training puts before every document), so the prompt is read as
the beginning of a document and an empty prompt starts from the beginning-of-document state. Every
token costs the same, however long the document: decode.step updates the state once per block.
"""

from __future__ import annotations

import codecs
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from block_recurrent import sharding
from block_recurrent.configs import ConfigError
from block_recurrent.data import vocab as vocab_lib
from block_recurrent.model import prefill as prefill_lib

BOS = 0


class ByteCodec:
  """seqio's byte vocabulary: byte b is id b + 3; ids 0-2 (pad, eos, unk), and any id past the bytes
  that a model's padded vocabulary may hold, stand for no bytes."""

  vocab_size = vocab_lib.BYTE_VOCAB_SIZE

  @staticmethod
  def _byte(i: int) -> bytes:
    return bytes([i - vocab_lib.BYTE_OFFSET]) if vocab_lib.BYTE_OFFSET <= i < vocab_lib.BYTE_VOCAB_SIZE else b''

  def encode(self, text: str) -> list[int]:
    return [b + vocab_lib.BYTE_OFFSET for b in text.encode('utf-8')]

  def decoder(self) -> Callable[[int | None], str]:
    """A streaming decoder: feed ids one by one, get the text they complete (bad UTF-8 becomes U+FFFD);
    feed None at the end for what an unfinished character leaves."""
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')

    def feed(i: int | None) -> str:
      if i is None:
        return utf8.decode(b'', final=True)
      return utf8.decode(self._byte(i))

    return feed

  def decode(self, ids: Sequence[int]) -> str:
    return b''.join(map(self._byte, ids)).decode('utf-8', 'replace')


class SentencePieceCodec:
  """A SentencePiece model; streaming re-decodes the continuation and emits what it adds."""

  def __init__(self, model_path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    self.vocab_size = self.processor.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return list(self.processor.encode(text)) if text else []

  def decode(self, ids: Sequence[int]) -> str:
    return self.processor.decode([int(i) for i in ids])

  def decoder(self) -> Callable[[int | None], str]:
    ids, shown = [], ['']

    def feed(i: int | None) -> str:
      if i is None:  # the end: whatever is left, replacement characters included
        text = self.decode(ids)
        return text[len(shown[0]):] if text.startswith(shown[0]) else ''
      ids.append(i)
      text = self.decode(ids)
      stable = text.rstrip('\ufffd')  # a piece may end inside a multi-byte character
      new = stable[len(shown[0]):] if stable.startswith(shown[0]) else ''
      shown[0] = stable if stable.startswith(shown[0]) else shown[0]
      return new

    return feed


def sample(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float,
           vocab_size: int | None = None) -> jax.Array:
  """Next tokens [B]: greedy at temperature 0, else softmax(logits / T) restricted to the top k and
  to the smallest set of tokens whose probability reaches top_p. Ids >= vocab_size (a model's padding
  past its task's vocabulary) are never chosen."""
  if vocab_size is not None and vocab_size < logits_BxV.shape[-1]:
    valid = jnp.arange(logits_BxV.shape[-1]) < vocab_size
    logits_BxV = jnp.where(valid, logits_BxV.astype(jnp.float32), -jnp.inf)
  if temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above each one
    cut = jnp.where(before >= top_p, -jnp.inf, sorted_logits)
    logits = jnp.full_like(logits, -jnp.inf).at[jnp.arange(logits.shape[0])[:, None], order].set(cut)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
  if temperature < 0:
    raise ConfigError(f'temperature must be >= 0 (0 is greedy), got {temperature}')
  if top_k < 0:
    raise ConfigError(f'top_k must be >= 0 (0 keeps every token), got {top_k}')
  if not 0.0 < top_p <= 1.0:
    raise ConfigError(f'top_p must lie in (0, 1], got {top_p}')
  if max_new_tokens < 0:
    raise ConfigError(f'max_new_tokens must be >= 0, got {max_new_tokens}')


def _mesh(params):
  """The mesh that params are placed on (brt-generate's restored weights), or None."""
  placed = getattr(jax.tree.leaves(params)[0], 'sharding', None)
  return placed.mesh if isinstance(placed, jax.sharding.NamedSharding) else None


class _Placed:
  """jax.jit(fn) for a program returning (..., logits, carry or decode state) whose outputs, on a mesh,
  are placed as the state's types declare, with the same sharding objects whichever program made them:
  jit's cache tells apart equal placements spelled differently (P(None, 'model') and P(None, 'model',
  None)), so without this, segment() compiled a second time for the carry it returns itself. The
  placements are those of the first call's shapes (generation always has one row)."""

  def __init__(self, fn, mesh, **jit_kwargs):
    self.fn, self.mesh, self.jit_kwargs, self.jitted = fn, mesh, jit_kwargs, None

  def __call__(self, *args):
    return self._jit(args)(*args)

  def lower(self, *args):
    return self._jit(args).lower(*args)

  def _jit(self, args):
    if self.jitted is None:
      if self.mesh is not None:
        *rest, state = jax.eval_shape(self.fn, *args)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        ours = set(sharding.MESH_AXES) <= set(self.mesh.axis_names)
        placed = sharding.carry_shardings(self.mesh, state) if ours else jax.tree.map(lambda _: replicated, state)
        self.jit_kwargs['out_shardings'] = (*[replicated] * len(rest), placed)
      self.jitted = jax.jit(self.fn, **self.jit_kwargs)
    return self.jitted

  def _cache_size(self) -> int:
    return self.jitted._cache_size() if self.jitted is not None else 0  # pylint: disable=protected-access


class _Prefill:
  """Reads a prompt with programs compiled once each, whatever its length (model/prefill.py): begin(),
  segment() once per whole segment, then rest() once on what is left, padded to a segment. Returns
  (logits, decode state)."""

  def __init__(self, graphdef, mesh):
    self.graphdef = graphdef
    merge = functools.partial(nnx.merge, graphdef)

    def begin(params, tokens_BxN):
      model = merge(params)
      batch = tokens_BxN.shape[0]
      return jnp.zeros((batch, model.config.vocab_size), jnp.float32), model.init_carry(batch)

    self.begin = _Placed(begin, mesh)
    self.segment = _Placed(lambda params, carry, tokens_BxN, start_B: prefill_lib.segment(
        merge(params), carry, tokens_BxN, start_B), mesh)
    self.rest = _Placed(lambda params, carry, logits, tokens_BxN, count, position: prefill_lib.rest(
        merge(params), carry, logits, tokens_BxN, count, position), mesh)

  def __call__(self, params, ids_BxP: np.ndarray):
    n = nnx.merge(self.graphdef, params).config.segment_length
    batch, length = ids_BxP.shape
    whole = length // n * n
    tail_BxN = np.zeros((batch, n), np.int32)
    tail_BxN[:, :length - whole] = ids_BxP[:, whole:]
    logits, carry = self.begin(params, tail_BxN)
    for begin in range(0, whole, n):
      logits, carry = self.segment(params, carry, ids_BxP[:, begin:begin + n], np.full((batch,), begin == 0))
    return self.rest(params, carry, logits, tail_BxN, np.int32(length - whole), np.int32(whole))


@functools.lru_cache(maxsize=16)
def _prefill(graphdef, mesh=None) -> _Prefill:
  return _Prefill(graphdef, mesh)


@functools.lru_cache(maxsize=16)
def _programs(graphdef, temperature: float, top_k: int, top_p: float, vocab_size: int | None = None,
              mesh=None):
  """(prefill, next_token) for params placed on `mesh` (None: not placed); the prefill programs are
  shared by every way of sampling."""

  def next_token(params, ds, logits, key):
    token = sample(logits, key, temperature, top_k, top_p, vocab_size)
    logits, ds = prefill_lib.token_forms(nnx.merge(graphdef, params))[1](ds, token)
    return token, logits, ds

  return _prefill(graphdef, mesh), _Placed(next_token, mesh, donate_argnums=1)


def generate_ids(model, params, prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, vocab_size: int | None = None,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
  """The ids after prompt_ids (a document's beginning); on_token sees each one as it is produced.
  vocab_size: the task vocabulary's size; ids the model has past it are never produced (default: none)."""
  _check_sampling(temperature, top_k, top_p, max_new_tokens)
  ids = np.asarray([BOS, *prompt_ids], np.int32)
  vocab = model.config.vocab_size
  if ids.size and (ids.min() < 0 or ids.max() >= vocab):
    raise ConfigError(f'prompt ids must lie in [0, {vocab}), got {ids.min()} .. {ids.max()}')
  if vocab_size is not None and vocab_size < 1:
    raise ConfigError(f'vocab_size must be >= 1 (the ids generation may produce), got {vocab_size}')
  limit = None if vocab_size is None or vocab_size >= vocab else int(vocab_size)
  graphdef, own = nnx.split(model)
  params = own if params is None else params
  prefill, next_token = _programs(graphdef, float(temperature), int(top_k), float(top_p), limit, _mesh(params))
  logits, ds = prefill(params, ids[None])
  key = jax.random.key(seed)
  out = []
  for n in range(max_new_tokens):
    token, logits, ds = next_token(params, ds, logits, jax.random.fold_in(key, n))
    out.append(int(token[0]))
    if on_token is not None:
      on_token(out[-1])
  return out


def codec_for(task: str, spm_path: str | None = None):
  """The codec of a task's vocabulary: bytes for *_bytes, the SentencePiece model for *_tokens."""
  if task.endswith('_bytes'):
    return ByteCodec()
  from block_recurrent.data import tasks  # pylint: disable=import-outside-toplevel
  return SentencePieceCodec(spm_path or tasks.DEFAULT_SPM)


def generate(model, params, prompt: str, *, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int = 0, codec=None, stream: Callable[[str], None] | None = None) -> str:
  """The continuation of `prompt` as text. params=None uses the model's own weights; codec defaults to
  bytes; stream(text) is called with each piece of text as soon as it is complete. Only ids of the codec's
  vocabulary are sampled."""
  codec = codec or ByteCodec()
  feed = codec.decoder()
  on_token = None if stream is None else (lambda i: stream(feed(i)))
  ids = generate_ids(model, params, codec.encode(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                     top_k=top_k, top_p=top_p, seed=seed, vocab_size=getattr(codec, 'vocab_size', None),
                     on_token=on_token)
  if stream is not None:
    stream(feed(None))
  return codec.decode(ids)
