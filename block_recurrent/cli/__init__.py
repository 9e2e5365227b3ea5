"""The brt-* commands, thin: each parses its flags and calls one function of the library inside
contract.guarded (one-line errors). Nothing below this package imports it."""
