#!/usr/bin/env bash
# Installs the PyTorch port of the Block-Recurrent Transformer (block-recurrent-transformer-pytorch 0.4.4)
# with a CPU build of torch into a virtual environment, for benchmarks/peer_pytorch.py.
#
#     bash benchmarks/install_peer.sh [VENV]      # VENV defaults to .venv
#
# torch==2.13.0 is pinned: a CPU build of it is found locally, whereas an unpinned torch pulls the
# registry's newest build with several GB of CUDA packages. The port and memorizing-transformers-pytorch
# are installed with --no-deps: the latter requires faiss-gpu, which the block-recurrent code never imports.
set -euo pipefail

venv="${1:-.venv}"
py="$venv/bin/python"
if [[ ! -x "$py" ]]; then
  echo "no python at $py: create the venv first (python3 -m venv $venv)" >&2
  exit 1
fi

if "$py" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  echo "torch 2.13.0 already in $venv"
else
  "$py" -m pip install 'torch==2.13.0'
fi

wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
"$py" -m pip download --no-deps -d "$wheels" \
  'block-recurrent-transformer-pytorch==0.4.4' 'memorizing-transformers-pytorch==0.4.1'
"$py" -m pip install --no-deps "$wheels"/*
"$py" -m pip install beartype einops joblib numpy psutil packaging

"$py" -c 'import torch, block_recurrent_transformer_pytorch as b; print("torch", torch.__version__, "port", b.__name__, "ok")'
