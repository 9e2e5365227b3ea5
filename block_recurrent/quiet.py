"""Start-up noise kept off the terminal: commands print only their own lines.

TensorFlow (imported by seqio, TFDS and the TensorBoard writer) logs through C++ before any logging is
configured, so no environment variable reaches it: "All log messages before absl::InitializeLog()",
oneDNN notices, "Could not find cuda drivers". `filtered_stderr` catches file descriptor 2 (C++ writes
included) around such an import and writes back every line that is not one of those known notices, so a
real warning or error still shows. `silenced_stderr` drops everything (libtpu's TPU-worker warnings around a
compile-only use, where nothing it says applies).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

NOISE = re.compile('|'.join([
    r'All log messages before absl::InitializeLog\(\) is called are written to STDERR',
    r'oneDNN custom operations are on',
    r'Could not find cuda drivers on your machine',
    r'failed call to cuInit',
    r'Unable to register cu(DNN|FFT|BLAS) factory',
    r'computation placer already registered',
    r'TF-TRT Warning: Could not find TensorRT',
    r'This TensorFlow binary is optimized to use available CPU instructions',
    r'To enable the following instructions: .* in other operations, rebuild TensorFlow',
    r'kernel driver does not appear to be running on this host',
    r'retrieving CUDA diagnostic information for host',
    r'(hostname|kernel reported version is): ',
]))


def is_noise(line: str) -> bool:
  return bool(NOISE.search(line))


class filtered_stderr:  # pylint: disable=invalid-name  (used as a context manager, like contextlib's)
  """Inside the block, file descriptor 2 goes to a temporary file; on exit its lines that are not known
  start-up noise are written back to stderr."""

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    self._file = tempfile.TemporaryFile(mode='w+b')
    os.dup2(self._file.fileno(), 2)
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    self._file.seek(0)
    kept = [line for line in self._file.read().decode('utf-8', 'replace').splitlines(keepends=True)
            if line.strip() and not is_noise(line)]
    self._file.close()
    if kept:
      sys.stderr.write(''.join(kept))
      sys.stderr.flush()
    return False


class silenced_stderr:  # pylint: disable=invalid-name
  """Silences file descriptor 2 (C++ logging included) inside the block."""

  def __enter__(self):
    sys.stderr.flush()
    self._saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    return False


def import_tensorflow():
  """tensorflow, imported with its start-up notices filtered out (the first import prints them)."""
  if 'tensorflow' in sys.modules:
    return sys.modules['tensorflow']
  with filtered_stderr():
    import tensorflow  # pylint: disable=import-outside-toplevel
    # Its devices are looked up at the first op (the CUDA probe, 'failed call to cuInit', without a GPU):
    # done here, inside the filter.
    tensorflow.config.list_physical_devices()
  return tensorflow
