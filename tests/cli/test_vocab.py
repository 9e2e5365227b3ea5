"""brt-vocab (block_recurrent/cli/vocab.py): its bad inputs and bad flag values (the cases of the
tables in docs/reliability.md, kept in tests/bad_inputs.py and tests/flag_values.py) are each one line on
stderr with exit status 2."""

import bad_inputs

test_bad_input_is_one_clear_line, test_bad_flag_value_is_one_line_and_exit_2 = bad_inputs.command_tests('brt-vocab')
