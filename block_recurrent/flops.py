"""Analytic parameter and FLOP counts, in closed form from the config (no arrays are built).

The parameter count is tested to equal the model's real one for every variant; the FLOPs feed MFU.
FLOPs count multiply-adds as 2, include the dense (masked-out too) attention that is actually computed,
and a training step costs 3x the forward pass (forward, and two matmuls per matmul in the backward).
"""

from __future__ import annotations

from block_recurrent.configs import ModelConfig


def _gate_params(cfg: ModelConfig, input_dim: int) -> int:
  d = cfg.d_model
  return d if cfg.gate == 'fixed' else 2 * input_dim * d + 2 * d


def state_params(cfg: ModelConfig) -> int:
  """Parameters of one recurrent layer's state side."""
  d, hd, f, h = cfg.d_model, cfg.qkv_dim, cfg.mlp_dim, cfg.num_heads
  n = 2 * cfg.num_states * d + d + 2 * d * (cfg.kv_dim + hd) + (2 * h if cfg.normalize_keys else 0)
  if cfg.wiring in ('skip', 'dual'):
    n += 2 * hd * d + _gate_params(cfg, 2 * hd)
  if cfg.wiring == 'dual':
    n += d + 2 * d * f + _gate_params(cfg, f)
  if cfg.wiring == 'single':
    n += 2 * hd * f + f * d + _gate_params(cfg, f)
  return n


def layer_params(cfg: ModelConfig, kind: str) -> int:
  d, hd, f, h = cfg.d_model, cfg.qkv_dim, cfg.mlp_dim, cfg.num_heads
  sources = 1 if kind == 'plain' else 2
  n = d + d * (2 * cfg.kv_dim + sources * hd) + sources * hd * d + h * cfg.relative_buckets + d + 2 * d * f
  n += sources * h if cfg.normalize_keys else 0
  return n + (state_params(cfg) if kind == 'recurrent' else 0)


def embedding_params(cfg: ModelConfig) -> int:
  return cfg.vocab_size * cfg.d_model


def param_count(cfg: ModelConfig) -> int:
  layers = sum(layer_params(cfg, cfg.layer_kind(i)) for i in range(cfg.total_layers))
  return embedding_params(cfg) + layers + cfg.d_model


def _state_forward_flops_per_block(cfg: ModelConfig) -> int:
  d, hd, f, s, w = cfg.d_model, cfg.qkv_dim, cfg.mlp_dim, cfg.num_states, cfg.window
  lstm = cfg.gate == 'lstm'
  n = 2 * s * d * 2 * (cfg.kv_dim + hd)  # Ks, Vs, Qs, Qs2
  n += 4 * s * s * hd + 4 * s * 2 * w * hd  # states -> states, states -> 2W tokens
  if cfg.wiring in ('skip', 'dual'):
    n += 2 * s * 2 * hd * d + (2 * s * 2 * hd * 2 * d if lstm else 0)
  if cfg.wiring == 'dual':
    n += 4 * s * d * f + (2 * s * f * 2 * d if lstm else 0)
  if cfg.wiring == 'single':
    n += 2 * s * 2 * hd * f + 2 * s * f * d + (2 * s * f * 2 * d if lstm else 0)
  return n


def _linear_forward_flops_per_token(cfg: ModelConfig) -> float:
  """Matmul FLOPs of a linear model's token (gated_lm.py): projections, recurrence, GRU gates, FFN."""
  d, h, dh, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
  eta, r, m = cfg.relit_eta, cfg.arelit_rank, cfg.gtrxl_memory
  total = 2 * d * cfg.vocab_size
  for i in range(cfg.total_layers):
    kind = cfg.linear_kind(i)
    total += 2 * 2 * d * 6 * d + 4 * d * f  # two GRU gates (6 d x d matmuls each) and the FFN
    total += 2 * h * dh * d  # output projection
    if kind == 'gtrxl':
      total += 2 * d * 3 * h * dh + 2 * h * dh * d + 4 * (m + 1) * h * dh + 2 * (m + 1) * h * d
    else:
      total += 2 * d * (5 * h * dh + 3 * h * eta)
      feat = eta * dh
      total += h * (4 * dh * feat + 2 * feat) if kind == 'relit' else h * (4 * r * (feat + dh) + 2 * feat)
  return float(total)


def forward_flops_per_token(cfg: ModelConfig) -> float:
  if cfg.sequence_layer != 'attention':
    return _linear_forward_flops_per_token(cfg)
  d, hd, f, w, s = cfg.d_model, cfg.qkv_dim, cfg.mlp_dim, cfg.window, cfg.num_states
  total = 2 * d * cfg.vocab_size  # tied logits
  for i in range(cfg.total_layers):
    kind = cfg.layer_kind(i)
    sources = 1 if kind == 'plain' else 2
    total += 2 * d * (2 * cfg.kv_dim + sources * hd) + 2 * sources * hd * d + 4 * d * f
    total += 4 * (2 * w) * hd  # token self-attention over 2W keys
    if sources == 2:
      total += 4 * s * hd  # tokens -> states
    if kind == 'recurrent':
      total += _state_forward_flops_per_block(cfg) / w
  return float(total)


def train_flops_per_token(cfg: ModelConfig) -> float:
  return 3.0 * forward_flops_per_token(cfg)
