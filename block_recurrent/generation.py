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

from block_recurrent.configs import ConfigError
from block_recurrent.data import vocab as vocab_lib
from block_recurrent.model import decode

BOS = 0


class ByteCodec:
  """seqio's byte vocabulary: byte b is id b + 3; ids 0-2 (pad, eos, unk) stand for no bytes."""

  def encode(self, text: str) -> list[int]:
    return [b + vocab_lib.BYTE_OFFSET for b in text.encode('utf-8')]

  def decoder(self) -> Callable[[int | None], str]:
    """A streaming decoder: feed ids one by one, get the text they complete (bad UTF-8 becomes U+FFFD);
    feed None at the end for what an unfinished character leaves."""
    utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')

    def feed(i: int | None) -> str:
      if i is None:
        return utf8.decode(b'', final=True)
      return utf8.decode(bytes([i - vocab_lib.BYTE_OFFSET]) if i >= vocab_lib.BYTE_OFFSET else b'')

    return feed

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(i - vocab_lib.BYTE_OFFSET for i in ids if i >= vocab_lib.BYTE_OFFSET).decode('utf-8', 'replace')


class SentencePieceCodec:
  """A SentencePiece model; streaming re-decodes the continuation and emits what it adds."""

  def __init__(self, model_path: str):
    import sentencepiece  # pylint: disable=import-outside-toplevel
    self.processor = sentencepiece.SentencePieceProcessor(model_file=str(model_path))

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


def sample(logits_BxV: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """Next tokens [B]: greedy at temperature 0, else softmax(logits / T) restricted to the top k and
  to the smallest set of tokens whose probability reaches top_p."""
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


@functools.lru_cache(maxsize=16)
def _programs(graphdef, temperature: float, top_k: int, top_p: float):
  # A model with its own step form (linear_lm) provides prefill/step; the attention family uses decode.py.
  def forms(model):
    if hasattr(model, 'prefill'):
      return model.prefill, model.step
    return (lambda tokens: decode.prefill(model, tokens)), (lambda ds, token: decode.step(model, ds, token))

  @jax.jit
  def prefill(params, tokens_1xP):
    return forms(nnx.merge(graphdef, params))[0](tokens_1xP)

  @functools.partial(jax.jit, donate_argnums=1)
  def next_token(params, ds, logits, key):
    token = sample(logits, key, temperature, top_k, top_p)
    logits, ds = forms(nnx.merge(graphdef, params))[1](ds, token)
    return token, logits, ds

  return prefill, next_token


def generate_ids(model, params, prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 on_token: Callable[[int], None] | None = None) -> list[int]:
  """The ids after prompt_ids (a document's beginning); on_token sees each one as it is produced."""
  _check_sampling(temperature, top_k, top_p, max_new_tokens)
  ids = np.asarray([BOS, *prompt_ids], np.int32)
  vocab = model.config.vocab_size
  if ids.size and (ids.min() < 0 or ids.max() >= vocab):
    raise ConfigError(f'prompt ids must lie in [0, {vocab}), got {ids.min()} .. {ids.max()}')
  graphdef, own = nnx.split(model)
  params = own if params is None else params
  prefill, next_token = _programs(graphdef, float(temperature), int(top_k), float(top_p))
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
  bytes; stream(text) is called with each piece of text as soon as it is complete."""
  codec = codec or ByteCodec()
  feed = codec.decoder()
  on_token = None if stream is None else (lambda i: stream(feed(i)))
  ids = generate_ids(model, params, codec.encode(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                     top_k=top_k, top_p=top_p, seed=seed, on_token=on_token)
  if stream is not None:
    stream(feed(None))
  return codec.decode(ids)
