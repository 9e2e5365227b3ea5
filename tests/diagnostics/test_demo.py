"""The quick-start run (diagnostics/demo.py): brt-train's step on the embedded novels for a few steps, the
loss printed in bits per byte; bad input is one line and exit status 2, as in every command."""

from block_recurrent.diagnostics import demo

TINY = ['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin']


def test_demo_trains_a_few_steps_and_bad_input_is_one_line(capsys):
  assert demo.main([*TINY, '--steps=2']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('model: ') and 'pg_mini_bytes train' in lines[0]
  bits = [float(line.split()[2]) for line in lines if line.startswith('step ')]
  assert len(bits) == 2 and all(0 < b < 12 for b in bits), lines
  assert lines[-1] == 'done: 2 segments per row, the state carried across them'
  assert demo.main([*TINY, '--gin_param=configs.ModelConfig.num_layers = -1']) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith(f'{demo.PROG}: error: ') and 'num_layers' in err[0], err
