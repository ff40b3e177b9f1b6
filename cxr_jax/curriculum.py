"""Curriculum schedules: values that change over the steps of one pretraining stage.

A schedulable setting (augmentation strength, temperature, EMA momentum, ...) is a
ConfigDict `{kind, start, end, steps}` so that every part of it can be overridden from
the command line with a fixed type (`--config.pretrain.stages.cxr.strength.end=0.9`):

  constant     start throughout
  linear       start -> end, linearly over the stage
  cosine       start -> end along half a cosine (slow, fast, slow)
  step         start -> end in `steps` equal jumps (a staircase)
  exponential  start -> end geometrically (start and end must be > 0)
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULE_KINDS = ('constant', 'linear', 'cosine', 'step', 'exponential')


def schedule(kind: str = 'constant', start: float = 0.0, end: float | None = None,
             steps: int = 4) -> ml_collections.ConfigDict:
  """A schedule spec for a config file; `end` defaults to `start`."""
  return ml_collections.ConfigDict(dict(
      kind=kind, start=float(start), end=float(start if end is None else end), steps=int(steps)))


def make_schedule(spec, num_steps: int, name: str = 'schedule') -> Callable:
  """Returns `f(step) -> value` for `spec` over a stage of `num_steps` steps.

  `spec` is a schedule ConfigDict or a plain number (a constant). `name` is the config key,
  used in error messages.
  """
  if isinstance(spec, (int, float)):
    return optax.constant_schedule(float(spec))
  kind, start, end = spec.kind, float(spec.start), float(spec.end)
  n = max(int(num_steps), 1)
  if kind == 'constant':
    return optax.constant_schedule(start)
  if kind == 'linear':
    return optax.linear_schedule(start, end, n)
  if kind == 'cosine':
    unit = optax.cosine_decay_schedule(1.0, n)  # 1 -> 0 along half a cosine
    return lambda step: end + (start - end) * unit(step)
  if kind == 'step':
    jumps = max(int(spec.steps), 1)
    # the staircase is start + delta * (number of edges passed)
    edges = jnp.asarray([int(round(n * i / jumps)) for i in range(1, jumps)], jnp.int32)
    delta = (end - start) / max(jumps - 1, 1) if jumps > 1 else 0.0
    return lambda step: start + delta * jnp.sum(jnp.asarray(step) >= edges)
  if kind == 'exponential':
    if start <= 0 or end <= 0:
      raise ValueError(f'{name}: an exponential schedule needs start > 0 and end > 0, '
                       f'got start={start}, end={end}')
    return optax.exponential_decay(start, transition_steps=n, decay_rate=end / start,
                                   end_value=end)
  raise ValueError(f'{name}.kind must be one of {SCHEDULE_KINDS}, got {kind!r}')
