"""Research drivers (demo, long-range recall, the T-Maze memory task, plots): they reuse the trainer's step
and the commands' error contract. Nothing below this package imports it."""
