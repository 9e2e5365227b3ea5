"""Frozen, validated configuration of the model.

gin binds these dataclasses from the top level (see `block_recurrent.ginconf`); nothing below this module
imports gin. Validation happens in `__post_init__`, so a bad configuration fails before any compute with
one line naming the field and what to do.
"""

from __future__ import annotations

import dataclasses
import math
import os

from block_recurrent.errors import ConfigError  # noqa: F401  (re-exported: configs.ConfigError)
from block_recurrent.errors import check as _check, is_int as _is_int

GATES = ('fixed', 'lstm')
WIRINGS = ('skip', 'dual', 'single')
SEQUENCE_LAYERS = ('attention', 'relit', 'arelit', 'gtrxl')
REMAT_POLICIES = ('none', 'full', 'dots', 'dots_no_batch')
DTYPES = ('float32', 'bfloat16')
LOGIT_SCALES = ('sqrt_d', 'sqrt_vocab')
DOCUMENT_START_KEYS = ('masked', 'zeros')


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that determines the model's parameters and its computation.

  Names follow brt.md: d_model = d, num_heads = H, head_dim = D, mlp_dim = F, window = W (block length),
  segment_length = N, num_states = S.
  """

  vocab_size: int = 32128
  num_layers: int = 12
  extra_layers: int = 0  # added to num_layers: Slide:13L is the 12-layer size plus one, composed by include
  d_model: int = 1024
  num_heads: int = 8
  head_dim: int = 128
  mlp_dim: int = 4096
  window: int = 512
  segment_length: int = 4096

  # Recurrence. An empty tuple is a plain sliding-window / Transformer-XL model.
  recurrent_layers: tuple[int, ...] = ()
  num_states: int = 512
  gate: str = 'fixed'
  # None: the paper's N(0, 0.1) init of the state gates' biases. A number v: the bias that decides how much of
  # the state is kept per block starts at v (plus that noise): the fixed gate keeps sigmoid(v) at first, the
  # LSTM gate's forget bias starts at v (before its +1). Not the paper's; for the recurrence studies.
  state_gate_bias: float | None = None
  wiring: str = 'skip'
  feedback: bool = False
  always_clear_state: bool = False

  # Attention.
  normalize_keys: bool = True  # L2-normalised keys/queries with learned temperatures; else 1/sqrt(D)
  use_xl_cache: bool = True  # carry the last block's keys/values across segments
  relative_buckets: int = 32
  relative_max_distance: int = 128
  # Key/value heads. None: one per query head (the paper). 1: multi-query attention, one key/value head
  # shared by all query heads (as in the PyTorch port); a divisor g of num_heads: grouped-query attention,
  # query head j reads key/value head j // (num_heads / g). Applies to every token and state attention.
  kv_heads: int | None = None
  # At a row's document start the previous block's keys/values are gone. 'masked' (ours): token
  # self-attention of block 0 and the state's cross-attention see no keys there. 'zeros' (the reference
  # code): the cache is zeroed and those W zero keys/values are attended to in both places.
  document_start_keys: str = 'masked'

  # Final logits = RMSNorm(y) @ E^T / sqrt(d) ('sqrt_d': today's reference and ours) or / sqrt(vocab_size)
  # ('sqrt_vocab': the code the paper ran, 2022; the paper experiments use it).
  logit_scale: str = 'sqrt_d'

  # Recurrent linear transformers (relit.md). 'attention' is the block-recurrent family above; 'relit',
  # 'arelit' or 'gtrxl' makes every layer a GRU-gated block around that sequence layer, except the layers
  # in attention_layers, which use GTrXL's cached attention (mixed models).
  sequence_layer: str = 'attention'
  attention_layers: tuple[int, ...] = ()
  relit_eta: int = 2
  relit_gating: str = 'separable'  # or 'reference'
  relit_chunk: int = 16  # positions per chunk of separable ReLiT's training form
  arelit_rank: int = 2
  relit_gate_bias: float | None = None  # None: the paper's bias-free gates; else learned gate biases from this
  arelit_mode: str = 'fixed'  # or 'faithful'
  gtrxl_memory: int = 128

  dropout_rate: float = 0.05  # applied only when the model is called with deterministic=False
  dtype: str = 'float32'  # compute dtype; parameters and the recurrent state are always float32

  # How the blocks of a segment are executed (see model/blocks.py). By default each layer processes the
  # whole segment (large matmuls) and only the recurrent state is scanned block by block; block_major runs
  # the whole stack one block at a time (what feedback needs, and the form generation uses).
  block_major: bool = False
  unroll: bool = False  # a Python loop over blocks instead of lax.scan
  scan_unroll: int = 1  # lax.scan's unroll factor
  # Token self-attention in this many query groups per block, each over only the keys its windows reach
  # (attention.attend_window); 1: one [W, 2W] product per block. Must divide window.
  attention_sub_blocks: int = 1
  remat: str = 'none'

  def __post_init__(self):
    self._check_sizes()
    self._check_family()
    self._check_options_and_layers()

  def _check_sizes(self):
    positive = ('vocab_size', 'num_layers', 'd_model', 'num_heads', 'head_dim', 'mlp_dim', 'window',
                'segment_length', 'num_states', 'relative_buckets', 'relative_max_distance', 'scan_unroll',
                'attention_sub_blocks')
    for name in positive:
      value = getattr(self, name)
      _check(_is_int(value) and value > 0, f'ModelConfig.{name} must be a positive integer, got {value!r}')
    _check(_is_int(self.extra_layers) and self.extra_layers >= 0,
           f'ModelConfig.extra_layers must be an integer >= 0, got {self.extra_layers!r}')
    for name in ('feedback', 'always_clear_state', 'normalize_keys', 'use_xl_cache', 'block_major', 'unroll'):
      _check(isinstance(getattr(self, name), bool),
             f'ModelConfig.{name} must be True or False, got {getattr(self, name)!r}')
    _check(self.state_gate_bias is None or (_is_number(self.state_gate_bias) and math.isfinite(self.state_gate_bias)),
           f'ModelConfig.state_gate_bias must be None or a finite number, got {self.state_gate_bias!r}')
    _check(_is_number(self.dropout_rate) and 0.0 <= self.dropout_rate < 1.0,
           f'ModelConfig.dropout_rate must be a number in [0, 1), got {self.dropout_rate!r}')
    # T5's buckets: half exact, half log-spaced from relative_buckets // 2 up to relative_max_distance.
    _check(self.relative_buckets >= 2, f'ModelConfig.relative_buckets must be at least 2, got '
           f'{self.relative_buckets}: use 32 (T5)')
    _check(self.relative_max_distance > self.relative_buckets // 2,
           f'ModelConfig.relative_max_distance {self.relative_max_distance} must exceed relative_buckets // 2 '
           f'= {self.relative_buckets // 2} (the exact buckets): raise it (T5: 32 buckets, 128)')
    for name in ('recurrent_layers', 'attention_layers'):
      indices = getattr(self, name)
      _check(isinstance(indices, (tuple, list)) and all(_is_int(i) for i in indices),
             f'ModelConfig.{name} must be a tuple of layer indices, got {indices!r}')
      object.__setattr__(self, name, tuple(indices))  # a gin list too: the config stays hashable
    _check(self.kv_heads is None or (_is_int(self.kv_heads) and self.kv_heads > 0
                                     and self.num_heads % self.kv_heads == 0),
           f'ModelConfig.kv_heads must be None or a positive divisor of num_heads={self.num_heads}, got '
           f'{self.kv_heads!r}: use None (one per head), 1 (multi-query) or a divisor (grouped)')
    _check(self.window % self.attention_sub_blocks == 0,
           f'ModelConfig.attention_sub_blocks {self.attention_sub_blocks} does not divide window {self.window}: '
           'use a divisor of the window (1, 2, 4, ...)')
    _check(self.window <= self.segment_length,
           f'window {self.window} is larger than segment_length {self.segment_length}: '
           'use a window <= the segment length')
    _check(self.segment_length % self.window == 0,
           f'segment_length {self.segment_length} is not a multiple of window {self.window}: '
           'make the segment a whole number of blocks')

  def _check_family(self):
    """The settings of the sequence layer's family (attention, or the gated relit/arelit/gtrxl)."""
    _check(self.sequence_layer in SEQUENCE_LAYERS, f'unknown sequence_layer {self.sequence_layer!r}: choose one '
           f'of {", ".join(SEQUENCE_LAYERS)}')
    if self.sequence_layer != 'attention':
      _check(self.relit_gating in ('separable', 'reference'),
             f"relit_gating must be 'separable' or 'reference', got {self.relit_gating!r}")
      _check(self.arelit_mode in ('fixed', 'faithful'),
             f"arelit_mode must be 'fixed' or 'faithful', got {self.arelit_mode!r}")
      for name in ('relit_eta', 'relit_chunk', 'arelit_rank', 'gtrxl_memory'):
        _check(_is_int(getattr(self, name)) and getattr(self, name) > 0,
               f'ModelConfig.{name} must be a positive integer, got {getattr(self, name)!r}')
      _check(self.relit_gate_bias is None or (_is_number(self.relit_gate_bias)
                                              and math.isfinite(self.relit_gate_bias)),
             f'ModelConfig.relit_gate_bias must be None or a finite number, got {self.relit_gate_bias!r}')
      _check(self.kv_heads is None, f'kv_heads belongs to the attention family; with '
             f'sequence_layer={self.sequence_layer!r} leave it None')
      _check(not self.recurrent_layers, f'recurrent_layers belong to the attention family; with '
             f'sequence_layer={self.sequence_layer!r} leave them empty')
      _check(self.dropout_rate == 0.0, f'sequence_layer={self.sequence_layer!r} has no dropout: set '
             'configs.ModelConfig.dropout_rate = 0.0 (include options/no_dropout.gin)')
      for index in self.attention_layers:
        _check(-self.total_layers <= index < self.total_layers,
               f'attention layer index {index} is out of range for {self.total_layers} layers')
      _check((self.sequence_layer != 'gtrxl' and not self.attention_layers) or self.d_model % 2 == 0,
             f"GTrXL's sinusoidal positions need an even d_model, got {self.d_model}: use an even d_model")
    else:
      _check(not self.attention_layers, 'attention_layers needs a sequence_layer other than attention')

  def _check_options_and_layers(self):
    _check(self.gate in GATES, f'unknown gate {self.gate!r}: choose one of {", ".join(GATES)}')
    _check(self.wiring in WIRINGS, f'unknown wiring {self.wiring!r}: choose one of {", ".join(WIRINGS)}')
    _check(self.remat in REMAT_POLICIES,
           f'unknown remat policy {self.remat!r}: choose one of {", ".join(REMAT_POLICIES)}')
    _check(self.dtype in DTYPES, f'unknown dtype {self.dtype!r}: choose one of {", ".join(DTYPES)}')
    _check(self.logit_scale in LOGIT_SCALES,
           f'unknown logit_scale {self.logit_scale!r}: choose one of {", ".join(LOGIT_SCALES)}')
    _check(self.document_start_keys in DOCUMENT_START_KEYS, f'unknown document_start_keys '
           f'{self.document_start_keys!r}: choose one of {", ".join(DOCUMENT_START_KEYS)}')
    _check(self.document_start_keys == 'masked' or (self.use_xl_cache and self.sequence_layer == 'attention'),
           "document_start_keys='zeros' attends to the zeroed XL cache at a document start: it needs the "
           "attention family with use_xl_cache=True (or leave it 'masked')")
    total = self.total_layers
    for index in self.recurrent_layers:
      _check(-total <= index < total,
             f'recurrent layer index {index!r} is out of range for a {total}-layer model: '
             f'use an index in [{-total}, {total - 1}]')
    resolved = [i % total for i in self.recurrent_layers]
    _check(len(set(resolved)) == len(resolved),
           f'recurrent_layers {self.recurrent_layers} name the same layer twice')
    _check(not self.feedback or len(resolved) == 1,
           f'feedback needs exactly one recurrent layer, got recurrent_layers={self.recurrent_layers}')

  @property
  def total_layers(self) -> int:
    return self.num_layers + self.extra_layers

  @property
  def recurrent_indices(self) -> tuple[int, ...]:
    """The recurrent layers as sorted non-negative indices."""
    return tuple(sorted(i % self.total_layers for i in self.recurrent_layers))

  @property
  def num_blocks(self) -> int:
    return self.segment_length // self.window

  @property
  def qkv_dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def key_heads(self) -> int:
    """Key/value heads: kv_heads, or num_heads when it is None."""
    return self.num_heads if self.kv_heads is None else self.kv_heads

  @property
  def kv_dim(self) -> int:
    return self.key_heads * self.head_dim

  def linear_kind(self, index: int) -> str:
    """The sequence layer of layer `index` in a linear model: 'gtrxl' for attention_layers, else its kind."""
    chosen = {i % self.total_layers for i in self.attention_layers}
    return 'gtrxl' if index in chosen else self.sequence_layer

  def layer_kind(self, index: int) -> str:
    """'recurrent', 'feedback' (a plain layer reading the state) or 'plain'."""
    if index in self.recurrent_indices:
      return 'recurrent'
    return 'feedback' if self.feedback else 'plain'


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which seqio task feeds the model, and how its documents are batched (see block_recurrent/data)."""

  task: str = 'pg_mini_bytes'  # <corpus>_bytes or <corpus>_tokens
  data_dir: str | None = None  # the corpus folder where the task reads one (pg19, arxiv, github, text_folder)
  spm_path: str | None = None  # SentencePiece model of *_tokens tasks (default: the embedded PG-mini 8k)
  batch_size: int = 8  # lanes, each streaming one document
  eval_batch_size: int | None = None  # lanes for evaluation (default batch_size); a split of few long books
  #                                     needs few, since each lane streams one book from start to end
  shuffle_seed: int | None = 0  # document order per epoch; None keeps the source order
  num_epochs: int | None = None  # None streams forever
  # The training stream is split into this many shards of batch_size / data_shards lanes, each with its
  # own documents (source index % data_shards) and cursor; each process reads data_shards / processes of
  # them. 0: one per process, or what the checkpoint being resumed used. Fixing it makes the batches the
  # same whatever the number of processes (a 2-host run equals a 1-host one, and resumes on either).
  data_shards: int = 0

  def __post_init__(self):
    _check(isinstance(self.task, str), 'DataConfig.task is required: add a task file such as '
           '--gin_file=task/pg_mini_bytes.gin (see gin/task/)')
    corpus, _, kind = self.task.rpartition('_')
    _check(bool(corpus) and kind in ('bytes', 'tokens'),
           f'DataConfig.task {self.task!r} must be <corpus>_bytes or <corpus>_tokens, e.g. pg_mini_bytes')
    _check(corpus not in ('github', 'text_folder') or self.data_dir is not None,
           f'task {self.task} needs a folder: set configs.DataConfig.data_dir')
    for name in ('data_dir', 'spm_path'):
      _check(getattr(self, name) is None or isinstance(getattr(self, name), (str, os.PathLike)),
             f'DataConfig.{name} must be None or a path, got {getattr(self, name)!r}')
    _check(_is_int(self.batch_size) and self.batch_size > 0,
           f'DataConfig.batch_size must be a positive integer, got {self.batch_size!r}')
    _check(self.eval_batch_size is None or (_is_int(self.eval_batch_size) and self.eval_batch_size > 0),
           f'DataConfig.eval_batch_size must be None (batch_size) or a positive integer, got '
           f'{self.eval_batch_size!r}')
    _check(self.shuffle_seed is None or (_is_int(self.shuffle_seed) and self.shuffle_seed >= 0),
           f'DataConfig.shuffle_seed must be None (source order) or an integer >= 0, got {self.shuffle_seed!r}')
    _check(self.num_epochs is None or (_is_int(self.num_epochs) and self.num_epochs > 0),
           f'DataConfig.num_epochs must be None (forever) or a positive integer, got {self.num_epochs!r}')
    _check(_is_int(self.data_shards) and self.data_shards >= 0,
           f'DataConfig.data_shards must be 0 (one per process) or positive, got {self.data_shards!r}')


OPTIMIZERS = ('adafactor', 'adamw')
SCHEDULES = ('rsqrt', 'cosine', 'linear', 'constant')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """The optimisation and the loop's cadence (see block_recurrent/train)."""

  num_steps: int = 1000
  # 'adafactor' is the paper's: factored moments, decay 0.8, momentum 0.9, parameter-scale updates, update
  # clipping, each of the reference's tensors on its own (train/adafactor.py)
  optimizer: str = 'adafactor'
  adafactor_clipping: float = 1.0  # update RMS clipping threshold per tensor (the paper's 1.0); 0: off
  learning_rate: float = 1.0  # peak is learning_rate / sqrt(warmup_steps) under 'rsqrt'
  schedule: str = 'rsqrt'
  warmup_steps: int = 1000
  weight_decay: float = 0.0  # adamw only
  grad_clip: float = 0.0  # global norm; 0 turns clipping off
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0  # 0: evaluate only at the end
  eval_segments: int = 0  # segments per lane per evaluation; 0: the whole validation split
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  peak_flops: float = 0.0  # FLOP/s for MFU; 0: the device's stated peak, or on CPU a best-of-7 matmul (peak.py)
  max_train_seconds: float = 0.0  # stop (checkpoint, evaluate) after this much training time; 0: no limit
  # Numerical faults: a step whose loss or gradient is not finite leaves parameters and optimiser state
  # unchanged (counted as `skipped_steps`); this many in a row stop the run, or roll it back.
  max_consecutive_skips: int = 5
  nonfinite_rollbacks: int = 0  # times to go back to the last checkpoint (skipping the data read since)
  inject_nonfinite_steps: tuple[int, ...] = ()  # fault injection for tests: NaN gradients at these steps (as logged)

  def __post_init__(self):
    for name in ('num_steps', 'warmup_steps', 'seed', 'log_every', 'eval_every', 'eval_segments', 'checkpoint_every',
                 'keep_checkpoints', 'max_consecutive_skips', 'nonfinite_rollbacks'):
      value = getattr(self, name)
      _check(isinstance(value, int) and not isinstance(value, bool), f'TrainConfig.{name} must be an integer, got {value!r}')
    for name in ('learning_rate', 'weight_decay', 'grad_clip', 'max_train_seconds', 'adafactor_clipping', 'peak_flops'):
      value = getattr(self, name)
      _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
             f'TrainConfig.{name} must be a finite number, got {value!r}')
    _check(self.num_steps > 0, f'TrainConfig.num_steps must be positive, got {self.num_steps}')
    _check(self.optimizer in OPTIMIZERS,
           f'unknown optimizer {self.optimizer!r}: choose one of {", ".join(OPTIMIZERS)}')
    _check(self.schedule in SCHEDULES, f'unknown schedule {self.schedule!r}: choose one of {", ".join(SCHEDULES)}')
    _check(self.learning_rate > 0, f'TrainConfig.learning_rate must be positive, got {self.learning_rate}')
    _check(self.weight_decay >= 0 and self.grad_clip >= 0,
           f'TrainConfig.weight_decay and grad_clip must be >= 0, got {self.weight_decay} and {self.grad_clip}')
    for name in ('warmup_steps', 'log_every', 'eval_every', 'eval_segments', 'checkpoint_every'):
      _check(getattr(self, name) >= 0, f'TrainConfig.{name} must be >= 0, got {getattr(self, name)}')
    _check(self.keep_checkpoints >= 1, f'TrainConfig.keep_checkpoints must be >= 1, got {self.keep_checkpoints}')
    _check(self.peak_flops >= 0, f'TrainConfig.peak_flops must be >= 0 (0: measured or stated), got {self.peak_flops}')
    _check(self.adafactor_clipping >= 0,
           f'TrainConfig.adafactor_clipping must be >= 0 (0: off), got {self.adafactor_clipping}')
    _check(self.max_train_seconds >= 0, f'TrainConfig.max_train_seconds must be >= 0, got {self.max_train_seconds}')
    _check(self.max_consecutive_skips >= 1,
           f'TrainConfig.max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}')
    _check(self.nonfinite_rollbacks >= 0, f'TrainConfig.nonfinite_rollbacks must be >= 0, got {self.nonfinite_rollbacks}')
    _check(all(isinstance(k, int) and k >= 1 for k in self.inject_nonfinite_steps),
           f'TrainConfig.inject_nonfinite_steps must be step numbers >= 1, got {self.inject_nonfinite_steps}')


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh ('data', 'fsdp', 'model'); one axis may be -1 to take the devices left over. The
  strategies in gin/mesh/: data_parallel (all on data), fsdp (parameters and optimiser state sharded over
  the fsdp axis, which also splits the batch), fsdp_model (fsdp plus heads and MLP over the model axis)."""

  data: int = -1
  fsdp: int = 1
  model: int = 1
