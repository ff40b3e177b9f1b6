"""Putting given weights into a model's freshly initialised variables, strictly.

Every weight a run carries (a curriculum stage into the next, an SSL encoder into a
classifier, converted ImageNet weights) goes through `merge_strict`: a leaf the source
lacks, one it has in excess, or one of another shape is an error naming that leaf, never
a silent fall back to random weights or a partial load.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np


def merge_strict(fresh: Any, given: Any, what: str, hint: str = '', _path: str = '') -> Any:
  """`fresh` with every leaf taken from `given` (same keys, same shapes).

  Args:
    fresh: nested dicts of arrays: the structure, key order and dtypes to produce.
    given: nested dicts with exactly the keys of `fresh` at every level.
    what: how errors name the source, e.g. "config.finetune.imagenet_checkpoint".
    hint: appended to errors (what to check).

  Returns:
    New nested dicts whose leaves are copies of `given`'s cast to `fresh`'s dtypes
    (copies: the result is donated to a training step while `given` may be needed again).

  Raises:
    ValueError naming the first missing or unexpected key, or the first leaf whose shape
    differs.
  """
  if isinstance(fresh, Mapping):
    if not isinstance(given, Mapping):
      raise ValueError(f'{what} does not fit the model: {_path or "the root"} is a leaf '
                       f'there, a subtree in the model{hint}')
    missing = [k for k in fresh if k not in given]
    extra = [k for k in given if k not in fresh]
    if missing or extra:
      first = f'{_path}{missing[0]} is missing' if missing else f'{_path}{extra[0]} is unexpected'
      raise ValueError(f'{what} does not fit the model: {first} ({len(missing)} missing, '
                       f'{len(extra)} unexpected keys at this level){hint}')
    return {k: merge_strict(v, given[k], what, hint, f'{_path}{k}/') for k, v in fresh.items()}
  if np.shape(given) != np.shape(fresh):
    raise ValueError(f'{what} does not fit the model: {_path.rstrip("/")} is '
                     f'{np.shape(given)}, the model has {np.shape(fresh)}{hint}')
  return jnp.array(given, dtype=fresh.dtype, copy=True)
