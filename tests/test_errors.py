"""block_recurrent/errors.py: the bad-input family, its one-line formatter, and the commands' status 2 for
every member of it."""

import numpy as np
import pytest

import block_recurrent as brt
from block_recurrent import configs, errors
from block_recurrent.cli import contract


def test_the_family_shares_one_base_that_is_a_value_error():
  for kind in (errors.ConfigError, errors.IOFailure, errors.CorruptData):
    assert issubclass(kind, errors.BadInput) and issubclass(kind, ValueError)
  assert not issubclass(errors.IOFailure, errors.ConfigError)
  assert not issubclass(errors.CorruptData, errors.ConfigError)
  assert configs.ConfigError is errors.ConfigError and brt.ConfigError is errors.ConfigError


def test_one_line_joins_the_non_blank_lines():
  assert errors.one_line('  first\n\n  second  \n third') == 'first second third'
  assert errors.one_line('a\nb\nc\nd\ne', 4) == 'a b c d'
  assert errors.one_line(RuntimeError('x\n y')) == 'x y'
  assert errors.one_line(KeyError()) == 'KeyError'  # an exception with no text: its type
  assert errors.one_line('') == '' and errors.lines(' a \n\n b') == ['a', 'b']


def test_check_and_is_int():
  errors.check(True, 'unused')
  with pytest.raises(errors.ConfigError, match='^must be positive$'):
    errors.check(False, 'must be positive')
  assert errors.is_int(3) and not errors.is_int(True) and not errors.is_int(3.0)
  assert not errors.is_int(np.int64(3)) and errors.is_int(np.int64(3), numpy=True)
  assert not errors.is_int(np.bool_(True), numpy=True) and not errors.is_int(True, numpy=True)


@pytest.mark.parametrize('kind', [errors.ConfigError, errors.IOFailure, errors.CorruptData])
def test_every_kind_of_bad_input_is_one_line_and_status_2(kind, capsys):
  def body():
    raise kind('cannot read x:\n  Permission denied')

  assert contract.guarded('brt-x', False, body) == 2
  assert capsys.readouterr().err == 'brt-x: error: cannot read x: Permission denied\n'
  with pytest.raises(kind):
    contract.guarded('brt-x', True, body)


def test_anything_else_is_status_1_with_its_type_and_first_line(capsys):
  def body():
    raise OSError('disk on fire\nmore')

  assert contract.guarded('brt-x', False, body) == 1
  assert capsys.readouterr().err == ('brt-x: error: OSError: disk on fire (rerun with --debug for the '
                                     'traceback)\n')
