"""Curriculum schedules: values that change over the steps of one pretraining stage.

A schedulable setting (augmentation strength, temperature, EMA momentum, ...) is a
ConfigDict `{kind, start, end, steps}` so that every part of it can be overridden from
the command line with a fixed type (`--config.pretrain.stages.cxr.strength.end=0.9`):

  constant     start throughout
  linear       start -> end, linearly over the stage
  cosine       start -> end along half a cosine (slow, fast, slow)
  step         start -> end in a staircase of `steps` equal levels (steps - 1 jumps)
  exponential  start -> end geometrically (start and end must be > 0)
"""
from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import ml_collections
import numpy as np
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


# --------------------------------------------------------------------------------------
# Pacing functions for data-difficulty curricula.
#
# A pacing function g(t) is the fraction of the training set, sorted from easy to hard,
# that the sampler may draw from at step t (Hacohen & Weinshall, "On the power of
# curriculum learning in training deep networks", ICML 2019, sec. 2; Platanios et al.,
# "Competence-based curriculum learning for neural machine translation", NAACL 2019,
# whose "competence" c(t) is the same thing). Every kind starts at `start` = g(0) and
# reaches 1 at step T = `full_at_step`, then stays at 1. They run on the host (numpy),
# inside the data sampler, never under jit.
# --------------------------------------------------------------------------------------

PACING_KINDS = ('none', 'linear', 'root', 'step', 'exponential')


def pacing(kind: str = 'none', start: float = 0.2, full_at: float = 0.5,
           increase: float = 2.0, power: float = 2.0) -> ml_collections.ConfigDict:
  """A pacing spec for a config file (every field present, so a locked config accepts
  overrides such as `--config.curriculum.pacing.kind=root`).

  Args:
    kind: one of PACING_KINDS ('none': all the data from step 0).
    start: g(0), the fraction of the easiest data visible at the first step.
    full_at: when the whole data set becomes visible, as a fraction of the stage's steps.
    increase: the growth factor of each jump of the 'step' kind (H&W's `inc`).
    power: p of the 'root' kind (2: square root).
  """
  return ml_collections.ConfigDict(dict(kind=kind, start=float(start), full_at=float(full_at),
                                        increase=float(increase), power=float(power)))


def pacing_fraction(kind: str, step, start: float, full_at_step: int, increase: float = 2.0,
                    power: float = 2.0):
  """g(t): the visible fraction of the easy-to-hard sorted data at step t.

  With t clipped to [0, T], T = full_at_step, s = start:
    none         g = 1
    linear       g = s + (1 - s) t / T                        (Platanios et al.'s linear
                 competence)
    root         g = (s^p + (1 - s^p) t / T)^(1/p), p = power (their root-p competence;
                 p = 2 is c_sqrt)
    step         g = min(1, s * increase^floor(t / L)), L = T / J, J = ceil(log(1/s) /
                 log(increase)): H&W's "fixed exponential pacing", with the step length L
                 chosen so that the J-th jump (the first to reach 1) happens at t = T
    exponential  g = s^(1 - t/T) = s (1/s)^(t/T), the smooth form of the same growth
  T <= 0 means g = 1 from the start.

  Args:
    kind: one of PACING_KINDS.
    step: t, an int or an integer numpy array (element-wise).
    start: s in [0, 1] (in (0, 1] for 'step' and 'exponential').
    full_at_step: T.
    increase: > 1, the factor of each jump ('step').
    power: p > 0 ('root').
  Returns:
    a float (or a float array shaped like `step`) in (0, 1].
  """
  if kind not in PACING_KINDS:
    raise ValueError(f'pacing.kind must be one of {PACING_KINDS}, got {kind!r}')
  if not 0.0 <= start <= 1.0:
    raise ValueError(f'pacing.start must be in [0, 1], got {start}')
  t = np.asarray(step)
  scalar = t.ndim == 0
  total = int(full_at_step)
  if kind == 'none' or total <= 0 or start >= 1.0:
    g = np.ones(t.shape, np.float64)
    return float(g) if scalar else g
  t = np.clip(t.astype(np.int64), 0, total)
  if kind == 'linear':
    g = start + (1.0 - start) * t / total
  elif kind == 'root':
    if power <= 0:
      raise ValueError(f'pacing.power must be > 0, got {power}')
    s_p = start ** power
    g = (s_p + (1.0 - s_p) * t / total) ** (1.0 / power)
  elif kind == 'step':
    if start <= 0 or increase <= 1:
      raise ValueError(f"pacing kind 'step' needs start > 0 and increase > 1, "
                       f'got start={start}, increase={increase}')
    jumps = int(math.ceil(math.log(1.0 / start) / math.log(increase) - 1e-12))
    g = start * increase ** ((t * jumps) // total)  # floor(t / L) with L = T / J, exactly
  else:  # exponential
    if start <= 0:
      raise ValueError(f"pacing kind 'exponential' needs start > 0, got start={start}")
    g = start ** (1.0 - t / total)
  g = np.minimum(np.asarray(g, np.float64), 1.0)
  return float(g) if scalar else g


def make_pacing(spec, num_steps: int, name: str = 'pacing') -> Callable:
  """Returns `g(step) -> fraction` for a pacing spec over a stage of `num_steps` steps.

  `spec` is a `pacing(...)` ConfigDict (full_at is a fraction of the stage), or None for
  no curriculum. Invalid settings raise here, naming `name`, not at the first step.
  """
  if spec is None:
    return lambda step: pacing_fraction('none', step, 1.0, 0)
  full_at_step = int(round(float(spec.full_at) * max(int(num_steps), 0)))
  kind, start = spec.kind, float(spec.start)
  increase, power = float(spec.increase), float(spec.power)
  try:
    pacing_fraction(kind, 0, start, full_at_step, increase, power)  # validate now
  except ValueError as e:
    raise ValueError(f'{name}: {e}') from None
  return lambda step: pacing_fraction(kind, step, start, full_at_step, increase, power)
