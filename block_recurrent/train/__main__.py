"""`python -m block_recurrent.train ...` is brt-train."""

from block_recurrent.cli.train import run

run()
