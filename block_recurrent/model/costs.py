"""Per-step inference cost of the sequence layers for a memory task: FLOPs of one step of a stack of
gated blocks (from XLA's cost analysis of the compiled step, batch 1) and recurrent-state bytes per
environment, as relit.md tabulates them for the reference modules.

Accounting: one environment, one step (T=1), `num_layers` GatedBlocks (GRU gates, FFN of 4d, the
attention of the kind) without embedding or heads; state = every array the next step needs (for GTrXL,
the cached keys/values of M tokens and their validity bits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from block_recurrent.configs import ModelConfig
from block_recurrent.model import gated_lm, linear_recurrent as linrec

KINDS = ('relit', 'arelit', 'gtrxl')


def step_cost(kind: str, *, d_model: int = 128, num_heads: int = 4, head_dim: int = 64, num_layers: int = 4,
              eta: int = 2, rank: int = 2, memory: int = 128) -> dict:
  """{'flops': per step, 'state_bytes': per environment} for a stack of `num_layers` gated blocks."""
  if kind not in KINDS:
    raise ValueError(f'unknown layer kind {kind!r}: choose one of {", ".join(KINDS)}')
  rngs = nnx.Rngs(0)
  cfg = ModelConfig(d_model=d_model, num_heads=num_heads, head_dim=head_dim, mlp_dim=4 * d_model,
                    sequence_layer=kind, relit_eta=eta, arelit_rank=rank, gtrxl_memory=memory, dropout_rate=0.0)
  blocks = [linrec.GatedBlock(gated_lm.sequence_layer(cfg, kind, rngs), d_model, 4 * d_model, rngs)
            for _ in range(num_layers)]
  graphdef, params = nnx.split(nnx.List(blocks))
  states = [b.init_state(1) for b in blocks]

  def step(params, x, states):
    stack = nnx.merge(graphdef, params)
    reset = jnp.zeros((1, 1), bool)
    new = []
    for block, st in zip(stack, states):
      x, st = block(x, st, reset, **({'form': 'step'} if kind != 'gtrxl' else {}))
      new.append(st)
    return x, new

  x = jnp.zeros((1, 1, d_model), jnp.float32)
  compiled = jax.jit(step).lower(params, x, states).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return {'flops': float(analysis.get('flops', float('nan'))), 'state_bytes': linrec.state_bytes(states)}
