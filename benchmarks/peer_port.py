"""The PyTorch port's side of benchmarks/peer_pytorch.py: building it on config S/M, and the table of how
its architecture differs from ours (printed under every comparison)."""

from __future__ import annotations

import contextlib

import numpy as np


def port_layer(index: int, layers: int) -> int:
  """Our 0-based (possibly negative) layer index as the port's 1-based one: -3 of 6 -> 4."""
  return (index % layers) + 1


def build_port(a, batch):
  """(run(steps), parameter count, constructor kwargs) of the port; eager PyTorch, torch.optim.Adam."""
  import torch
  from block_recurrent_transformer_pytorch import BlockRecurrentTransformer

  torch.manual_seed(0)
  kwargs = dict(
      num_tokens=256,
      dim=a.d_model,
      depth=a.layers,
      dim_head=a.head_dim,
      heads=a.heads,  # query heads; keys and values have a single head of dim_head, shared by all of them
      ff_mult=a.mlp_dim / a.d_model,  # GEGLU of inner width int(2/3 * ff_mult * dim): ~ the parameters of our MLP
      max_seq_len=a.segment,  # one forward = one segment, split into blocks of block_width
      block_width=a.window,
      num_state_vectors=a.states,
      recurrent_layers=(port_layer(a.recurrent_layer, a.layers),),  # 1-based
      use_flash_attn=a.port_flash,  # default False: the port's own einsum attention
  )
  model = BlockRecurrentTransformer(**kwargs)
  model.train()
  n_params = sum(p.numel() for p in model.parameters())
  optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
  # segment + 1 tokens: forward(return_loss=True) predicts x[:, 1:] from x[:, :-1], i.e. `segment` targets.
  tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, a.segment + 1))).long()
  # XL memories and states: the port returns them (detached) when the input is exactly max_seq_len long,
  # and takes them back as xl_memories= / states= for the next segment (what RecurrentTrainerWrapper does
  # within one long sequence; here across steps, as our carry is).
  carry = {'memories': [], 'states': []}

  # --bf16: the forward under CPU autocast (bfloat16 matmuls, float32 parameters and optimizer).
  precision = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext

  def run(steps):
    loss = None
    for _ in range(steps):
      with precision():
        loss, carry['memories'], carry['states'] = model(
            tokens, return_loss=True, xl_memories=carry['memories'], states=carry['states'])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
    return float(loss.detach())

  return run, n_params, kwargs


def differences(a, optimizer_ours):
  """(aspect, ours, port) rows of the architectural and setup differences."""
  return [
      ('keys / values', f'{a.heads} heads x {a.head_dim}', f'1 head x {a.head_dim} shared by {a.heads} query heads'),
      ('FFN', f'ReLU MLP {a.d_model}->{a.mlp_dim}->{a.d_model}',
       f'GEGLU, 2 x {int(a.mlp_dim * 2 / 3)} in, {int(a.mlp_dim * 2 / 3)} out (parameter-matched)'),
      ('positions', 'T5 relative bias (32 buckets, max distance 128)', 'rotary with xpos scaling'),
      ('attention scores', 'L2-normalised queries/keys, learned temperature (all layers)',
       'dot product / sqrt(D); l2-norm + learned scale only in the recurrent layer'),
      ('token mask', f'sliding window: exactly the {a.window} previous tokens'
       + (f' ({a.attention_sub_blocks} query groups per block, each over the {a.window + a.window // a.attention_sub_blocks}'
          ' keys its windows reach)' if a.attention_sub_blocks > 1 else ''),
       f'previous block (XL) + causal current block: {a.window + 1}..{2 * a.window} keys'),
      ('norms / output', 'RMSNorm; tied output embedding', 'bias-less LayerNorm; untied output layer'),
      ('recurrent cell', 'fixed gate (a learned per-channel EMA), skip wiring: no state FFN (paper)',
       'learned-EMA fixed gate, no state FFN'),
      ('vocabulary', '260 (bytes + 4 reserved ids)', '256'),
      ('execution', 'XLA-jitted step, layer-major, scan over blocks; '
       + (f'data parallel over {a.cpu_devices} XLA CPU devices (one per core)' if a.cpu_devices > 1
          else 'one XLA CPU device (2 threads)'),
       f'eager, block-major Python loop; torch with {a.threads} threads'),
      ('dropout', '0 (set for this benchmark)', 'none'),
      ('optimizer', optimizer_ours, 'Adam (torch.optim)'),
      ('precision', 'bfloat16 matmuls (dtype=bfloat16), float32 parameters, state and softmax' if a.bf16
       else 'float32', 'bfloat16 autocast of the forward, float32 parameters' if a.bf16 else 'float32'),
  ]
