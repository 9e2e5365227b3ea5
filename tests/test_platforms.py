"""Which backends jax starts (platforms.py): libtpu stays unstarted where no TPU is attached, and importing
the package prints none of its start-up noise."""

from block_recurrent import platforms


def test_libtpu_is_not_started_where_there_is_no_tpu(monkeypatch):
  """With libtpu installed and no TPU attached, jax is told to start only the CPU (or GPU) backend; a
  JAX_PLATFORMS of the user's own is kept."""
  env = {}
  assert platforms.select(env, tpu=False) == 'cpu' and env == {'JAX_PLATFORMS': 'cpu'}
  assert platforms.select({'JAX_PLATFORMS': 'tpu'}, tpu=False) is None
  assert platforms.select({}, tpu=True) is None


def test_a_command_prints_no_libtpu_start_up_noise(tmp_path):
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  out = subprocess.run([sys.executable, '-c', 'import block_recurrent, jax; print(jax.default_backend())'],
                       capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
  assert out.returncode == 0 and out.stdout.strip() == 'cpu', out.stderr
  assert 'TPU' not in out.stderr and 'libtpu' not in out.stderr, out.stderr


def test_tensorflow_prints_no_cuda_probe_at_its_first_op(tmp_path):
  """TensorFlow (seqio's, the TensorBoard writer's) looks for CUDA at its first op, not at import, and logs
  'failed call to cuInit' where there is none: the package makes that first look inside its filter."""
  import os
  import subprocess
  import sys
  env = {k: v for k, v in os.environ.items() if k not in ('JAX_PLATFORMS', 'XLA_FLAGS')}
  code = ('import block_recurrent.data.tasks\nfrom block_recurrent import quiet\n'
          'tf = quiet.import_tensorflow()\nprint(float(tf.constant(2.0) * 2))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
  assert out.returncode == 0 and out.stdout.strip() == '4.0', out.stderr
  assert out.stderr == '', out.stderr
