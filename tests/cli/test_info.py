"""brt-info (block_recurrent/cli/info.py): its bad inputs and bad flag values (the cases of the
tables in docs/reliability.md, kept in tests/bad_inputs.py and tests/flag_values.py) are each one line on
stderr with exit status 2."""

import pytest

import bad_inputs
import flag_values

BAD_INPUTS = bad_inputs.of('brt-info')
FLAG_VALUES = flag_values.of('brt-info')


@pytest.mark.parametrize('case', BAD_INPUTS, ids=bad_inputs.ids(BAD_INPUTS))
def test_bad_input_is_one_clear_line(case, tmp_path, request, monkeypatch, capsys, caplog):
  bad_inputs.check(case, tmp_path, request, monkeypatch, capsys, caplog)


@pytest.mark.parametrize('case', FLAG_VALUES, ids=bad_inputs.ids(FLAG_VALUES))
def test_bad_flag_value_is_one_line_and_exit_2(case, tmp_path, request, monkeypatch, capsys):
  flag_values.check(case, tmp_path, request, monkeypatch, capsys)
