"""What every section of report.md reads (`Run`, loaded and computed once by `prepare`:
stacked predictions, their CIs, the attention files and summaries) and the table helpers
the sections share. A bootstrap is seeded per call, so no section's numbers depend on the
order they are computed in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from cxr_jax import vocab
from cxr_jax.eval import bootstrap
from cxr_jax.report import attention, fmt, loading

NAN2 = (float('nan'), float('nan'))


@dataclasses.dataclass
class Run:
  """What the sections read.

  Attributes:
    workdir: the run's folder.
    groups: {(protocol, init, fraction): results}, `loading.group_results`.
    n_boot, seed: bootstrap resamples and seed.
    stacks: {key: `loading.Stack` or None}; why: {key: why it is None}.
    cis: {key: {metric: (lo, hi)}} for the stacked groups (none when n_boot is 0).
    atts: {key: `loading.load_attention` dict}, the groups with attention files only.
    summaries: {key: `attention.attention_summary`} of those.
    class_cis: {key: {'auroc' | 'map' | 'ece': [(lo, hi)] per finding}}, multi-label
      groups only.
  """
  workdir: Path
  groups: dict
  n_boot: int
  seed: int
  stacks: dict
  why: dict
  cis: dict
  atts: dict
  summaries: dict
  class_cis: dict = dataclasses.field(default_factory=dict)

  @property
  def protocols(self) -> list[str]:
    return sorted({k[0] for k in self.groups}, key=vocab.protocol_order)

  def keys(self, protocol: str) -> list[tuple]:
    return [k for k in self.groups if k[0] == protocol]


def prepare(workdir: Path, groups: dict, n_boot: int, seed: int) -> Run:
  """Stacks each group's predictions and attention files and bootstraps their CIs."""
  stacks, why, cis = {}, {}, {}
  for key, rs in groups.items():
    stacks[key], why[key] = loading.stack_predictions(rs)
    if stacks[key] is not None and n_boot > 0:
      s = stacks[key]
      cis[key] = bootstrap.seed_mean_cis(s.labels, s.probs, s.groups, n_boot, seed)
  class_cis = {key: {m: bootstrap.seed_mean_class_cis(s.labels, s.probs, s.groups, n_boot,
                                                      seed, metric=m)
                     for m in ('auroc', 'map', 'ece')}
               for key, s in stacks.items() if s is not None and s.multilabel and n_boot > 0}
  atts = {key: loading.load_attention(rs, stacks[key].groups if stacks[key] is not None
                                      else None) for key, rs in groups.items()}
  atts = {k: v for k, v in atts.items() if v is not None}
  summaries = {k: attention.attention_summary(a, n_boot, seed) for k, a in atts.items()}
  return Run(workdir, groups, n_boot, seed, stacks, why, cis, atts, summaries, class_cis)


# ----------------------------------------------------------------------------- formatting

_fmt, _fmt_p = fmt.number, fmt.p_value  # every number of a table goes through these


def mean_std_cell(values) -> str:
  mean, std = loading.mean_std(values)
  return f'{_fmt(mean)} ± {_fmt(std)}' if np.isfinite(mean) else '–'


def table_head(columns: list[str], first: str = 'init | label fraction | seeds') -> list[str]:
  """A table's header and rule lines."""
  return [f'| {first} | ' + ' | '.join(columns) + ' |',
          '|---' * (len(first.split(' | ')) + len(columns)) + '|']


def group_row(key, rs, cells: list[str]) -> str:
  return f'| {key[1]} | {key[2]:g} | {len(rs)} | ' + ' | '.join(cells) + ' |'
