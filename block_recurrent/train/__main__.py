"""`python -m block_recurrent.train ...` is brt-train."""

from block_recurrent.main import run

run()
