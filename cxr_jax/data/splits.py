"""Patient-level splits and label-fraction subsets, free of leakage and deterministic.

Chest X-ray datasets hold several images per patient (follow-ups, views). Splitting by
image lets a model recognise a patient's anatomy in the test set instead of the
disease, so every split here is made per patient:

  assign_split(pid, fractions, seed)  -> 'train' | 'val' | 'test', from a hash of the
                                         patient id: the same patient always lands in the
                                         same split, whatever other patients exist, on any
                                         machine (no dependence on file order or Python's
                                         salted hash()).
  patient_overlap(splits)             -> the patients found in several splits;
  check_no_patient_overlap(splits)    -> raises PatientOverlapError naming them.
  label_fraction_subset(labels, patients, fraction, seed)
                                      -> indices of a 1% / 10% / ... labelled subset,
                                         drawn per patient and stratified by class; the
                                         subsets are nested (1% inside 10%) for one seed.
  finding_fraction_subset(targets, patients, fraction, seed)
                                      -> the same for multi-label targets: every finding
                                         with a positive patient keeps one.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np

SPLIT_NAMES = ('train', 'val', 'test')
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


class PatientOverlapError(ValueError):
  """Some patient ids occur in more than one split."""


def _unit_hash(key: str, seed: int) -> float:
  """A uniform number in [0, 1) from `key` and `seed`, stable across runs and machines."""
  digest = hashlib.sha256(f'{seed}:{key}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def _check_fractions(fractions: Sequence[float], names: Sequence[str]) -> np.ndarray:
  fractions = np.asarray(fractions, np.float64)
  if len(fractions) != len(names):
    raise ValueError(f'{len(fractions)} split fractions {tuple(fractions)} for '
                     f'{len(names)} split names {tuple(names)}')
  if (fractions < 0).any() or not np.isclose(fractions.sum(), 1.0, atol=1e-6):
    raise ValueError(f'split fractions must be >= 0 and sum to 1, got {tuple(fractions)}')
  return fractions


def assign_split(patient_id: str,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 seed: int = 0,
                 names: Sequence[str] = SPLIT_NAMES) -> str:
  """The split of one patient: deterministic in (patient_id, seed, fractions)."""
  cumulative = np.cumsum(_check_fractions(fractions, names))
  u = _unit_hash(str(patient_id), seed)
  index = int(np.searchsorted(cumulative, u, side='right'))
  return names[min(index, len(names) - 1)]


def assign_splits(patient_ids: Iterable[str],
                  fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0,
                  names: Sequence[str] = SPLIT_NAMES) -> list[str]:
  """`assign_split` for each element of `patient_ids` (one entry per image)."""
  return [assign_split(p, fractions, seed, names) for p in patient_ids]


def patient_overlap(splits: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
  """Patient id -> the sorted splits it occurs in, for every patient in two or more."""
  where = defaultdict(set)
  for split, patients in splits.items():
    for p in patients:
      where[str(p)].add(split)
  return {p: sorted(s) for p, s in sorted(where.items()) if len(s) > 1}


def check_no_patient_overlap(splits: Mapping[str, Iterable[str]], hint: str = '') -> None:
  """Raises PatientOverlapError if any patient id occurs in two or more splits.

  Args:
    splits: split name -> patient ids of its examples (repeats allowed).
    hint: how to resolve it (e.g. the builder option that re-splits by patient),
      appended to the message.

  Raises:
    PatientOverlapError: naming every offending patient and the splits it is in.
  """
  overlap = patient_overlap(splits)
  if overlap:
    shown = list(overlap)[:20]
    lines = [f'  patient {p!r} in splits {overlap[p]}' for p in shown]
    more = f'\n  ... and {len(overlap) - len(shown)} more' if len(overlap) > len(shown) else ''
    raise PatientOverlapError(
        f'{len(overlap)} patient(s) appear in more than one split; images of one patient '
        'must stay in one split (otherwise test scores leak):\n' + '\n'.join(lines) + more
        + (f'\n{hint}' if hint else ''))


def label_fraction_subset(labels: Sequence[int],
                          patients: Sequence[str],
                          fraction: float,
                          seed: int = 0) -> np.ndarray:
  """Indices of a labelled subset holding about `fraction` of the patients of each class.

  Patients are drawn whole (all their images come along), per class, so that a 1% subset
  keeps the class balance of the full set and no class vanishes: every class with at
  least one patient keeps at least one. A patient whose images carry different labels is
  counted in the class of its most frequent label. Unlabeled examples (label < 0) are
  never selected. For one seed the subsets are nested: the 1% patients are among the
  10% patients, so results across fractions differ only by the added labels.

  Args:
    labels: int label per example, -1 for unlabeled.
    patients: patient id per example.
    fraction: in (0, 1]; 1 returns every labelled example.
    seed: selects which patients.

  Returns:
    sorted int64 indices into `labels`.
  """
  labels = np.asarray(labels)
  if labels.shape[0] != len(patients):
    raise ValueError(f'{labels.shape[0]} labels but {len(patients)} patient ids')
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'label fraction must be in (0, 1], got {fraction}')
  by_patient = defaultdict(list)
  for i, p in enumerate(patients):
    if labels[i] >= 0:
      by_patient[str(p)].append(i)
  by_class = defaultdict(list)
  for p, idx in by_patient.items():
    values, counts = np.unique(labels[idx], return_counts=True)
    by_class[int(values[np.argmax(counts)])].append(p)
  chosen = []
  for cls in sorted(by_class):
    # Order patients by a seeded hash: taking a prefix gives nested subsets.
    ranked = sorted(by_class[cls], key=lambda p: (_unit_hash(p, seed), p))
    k = max(1, int(round(fraction * len(ranked))))
    for p in ranked[:k]:
      chosen.extend(by_patient[p])
  return np.asarray(sorted(chosen), np.int64)


def finding_fraction_subset(targets, patients: Sequence[str], fraction: float,
                            seed: int = 0) -> np.ndarray:
  """Indices of a labelled subset of about `fraction` of the patients, for multi-label
  targets, keeping a positive of every finding where the data has one.

  Patients with at least one observed target are ranked by a seeded hash and the first
  round(fraction * P) (at least one) are taken; then, for each finding that has a
  positive patient but none among those taken, the first-ranked patient with a positive
  for it is added. Subsets stay nested for one seed (that patient is in every longer
  prefix that holds any positive of the finding). A finding without a positive in the
  whole split stays without one: its classifier learns "absent", and the report shows
  what that gives on test. Rows whose targets are all NaN are never selected.

  Args:
    targets: [N, F] float, 1 / 0 / NaN (not observed).
    patients: patient id per example.
    fraction: in (0, 1]; 1 returns every example with an observed target.
    seed: selects which patients.

  Returns:
    sorted int64 indices into `targets`.
  """
  targets = np.asarray(targets, np.float64)
  if targets.ndim != 2 or targets.shape[0] != len(patients):
    raise ValueError(f'targets {targets.shape} must be [N, F] with N = {len(patients)} '
                     'patient ids')
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'label fraction must be in (0, 1], got {fraction}')
  by_patient = defaultdict(list)
  for i, p in enumerate(patients):
    if not np.all(np.isnan(targets[i])):
      by_patient[str(p)].append(i)
  ranked = sorted(by_patient, key=lambda p: (_unit_hash(p, seed), p))
  k = max(1, int(round(fraction * len(ranked)))) if ranked else 0
  chosen = set(ranked[:k])
  positive = {p: np.nan_to_num(targets[idx], nan=0.0).max(axis=0) >= 0.5
              for p, idx in by_patient.items()}
  for f in range(targets.shape[1]):
    if not any(positive[p][f] for p in chosen):
      first = next((p for p in ranked if positive[p][f]), None)
      if first is not None:
        chosen.add(first)
  return np.asarray(sorted(i for p in chosen for i in by_patient[p]), np.int64)
