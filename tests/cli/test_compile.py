"""brt-compile with XLA's real TPU compiler (libtpu, from the `tpu` extra the README's test set-up installs):
the tiny model's train and generate steps compile for a small slice and fit, and a batch that does not split,
a model that cannot fit or an unknown topology is one line and exit status 2."""

import pytest

from block_recurrent.cli import compile as compile_cli

TINY = ['--gin_file=gin/experiments/tiny/rec_fixed_skip.gin', '--gin_file=gin/task/pg_mini_bytes.gin']


def _compile(capsys, *args):
  capsys.readouterr()
  code = compile_cli.main([*TINY, *args])
  out, err = capsys.readouterr()
  return code, out.splitlines(), err.strip().splitlines()


@pytest.mark.parametrize('step', ['train', 'generate'])
def test_tiny_steps_compile_for_a_tpu_slice_and_fit(step, capsys):
  code, lines, err = _compile(capsys, '--topology=v5e-4', f'--step={step}')
  assert code == 0, err
  assert lines[0] == 'devices: 4 (TPU v5e, 16 GiB HBM each)'
  assert lines[1] == 'mesh: data=4 x fsdp=1 x model=1'
  assert lines[-1].startswith('peak per device: ') and lines[-1].endswith(' of 16.00 GiB HBM: fits'), lines
  flops = next(l for l in lines if l.startswith('FLOPs per step: XLA '))
  xla, analytic = (float(flops.split()[i].rstrip(',')) for i in (4, 6))
  assert xla > 0 and analytic > 0 and (0.5 < xla / analytic < 3.0 if step == 'train' else xla >= analytic)


def test_a_batch_that_does_not_split_is_one_line(capsys):
  code, lines, err = _compile(capsys, '--topology=v5e-4', '--gin_param=configs.DataConfig.batch_size = 6')
  assert code == 2 and lines == [] and len(err) == 1
  assert err[0] == ("brt-compile: error: DataConfig.batch_size 6 cannot be split evenly over the mesh's batch axes "
                    'data=4 x fsdp=1 (4 ways): use 4 or 8 rows, or a mesh whose batch axes divide 6')


def test_a_model_that_cannot_fit_is_one_line(capsys):
  code, lines, err = _compile(capsys, '--topology=v5e-1', '--gin_param=configs.ModelConfig.d_model = 8192',
                              '--gin_param=configs.ModelConfig.mlp_dim = 65536')
  assert code == 2 and len(err) == 1, err
  assert err[0].startswith('brt-compile: error: does not fit: peak per device ')
  assert 'GiB > 16.00 GiB HBM on v5e-1' in err[0] and '; try bf16 compute (gin/options/bf16.gin)' in err[0]


def test_unknown_topology_is_one_line(capsys):
  code, _, err = _compile(capsys, '--topology=v9-8')
  assert code == 2 and len(err) == 1 and "unknown --topology 'v9-8': use local or one of v4-8" in err[0]
