"""Numbers in the report's and the sweep's tables: every one goes through `number` or
`p_value`, so no table prints `nan` or `inf`: an undefined value is a dash (DASH), and the
table that prints one says why under it."""
from __future__ import annotations

import math

DASH = '–'


def defined(x) -> bool:
  """Whether `x` is a number a table can print (not None, NaN or infinite)."""
  try:
    return x is not None and math.isfinite(x)
  except TypeError:
    return False


def number(x, digits: int = 3, sign: bool = False) -> str:
  """`x` with `digits` decimals (and a '+' for positive values with `sign`), DASH when
  it is undefined."""
  if not defined(x):
    return DASH
  return f'{x:+.{digits}f}' if sign else f'{x:.{digits}f}'


def p_value(p) -> str:
  """A p-value with 3 decimals, '<0.001' below, DASH when it is undefined."""
  if not defined(p):
    return DASH
  return f'{p:.3f}' if p >= 0.001 else '<0.001'
