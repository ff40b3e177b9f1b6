"""Patient-level splits, overlap check, label-fraction subsets."""
from collections import Counter

import numpy as np
import pytest

from cxr_jax.data import splits


def test_assign_split_is_deterministic_and_follows_fractions():
  pids = [f'patient{i}' for i in range(4000)]
  a = splits.assign_splits(pids, (0.7, 0.2, 0.1), seed=3)
  assert a == splits.assign_splits(pids, (0.7, 0.2, 0.1), seed=3)
  # Independent of which other patients exist or their order.
  assert splits.assign_splits(pids[::-1], (0.7, 0.2, 0.1), seed=3) == a[::-1]
  counts = Counter(a)
  assert abs(counts['train'] / 4000 - 0.7) < 0.03
  assert abs(counts['val'] / 4000 - 0.2) < 0.03
  assert abs(counts['test'] / 4000 - 0.1) < 0.03
  assert splits.assign_splits(pids, (0.7, 0.2, 0.1), seed=4) != a
  # Pinned values: a change of the hash would silently reshuffle everyone's splits.
  assert [splits.assign_split(f'p{i}', seed=0) for i in range(8)] == [
      'train', 'test', 'train', 'train', 'train', 'train', 'test', 'train']


def test_fractions_validated():
  with pytest.raises(ValueError, match='sum to 1'):
    splits.assign_split('p', (0.5, 0.2, 0.1))
  with pytest.raises(ValueError, match='3 split names'):
    splits.assign_split('p', (0.5, 0.5))
  assert splits.assign_split('p', (0.0, 0.0, 1.0)) == 'test'


def test_patient_overlap_names_patients_and_splits():
  splits.check_no_patient_overlap({'train': ['a', 'a', 'b'], 'test': ['c']})
  with pytest.raises(splits.PatientOverlapError) as err:
    splits.check_no_patient_overlap({'train': ['a', 'b', 'x'], 'val': ['b'],
                                     'test': ['x', 'c']})
  text = str(err.value)
  assert "2 patient(s)" in text
  assert "'b' in splits ['train', 'val']" in text
  assert "'x' in splits ['test', 'train']" in text


def test_label_fraction_per_patient_stratified_and_nested():
  rng = np.random.default_rng(0)
  patients, labels = [], []
  # 200 patients of class 0, 20 of class 1, 5 of class 2; 1-3 images each; some unlabeled.
  for cls, n in [(0, 200), (1, 20), (2, 5)]:
    for i in range(n):
      for _ in range(rng.integers(1, 4)):
        patients.append(f'c{cls}p{i}')
        labels.append(cls)
  patients += ['u1', 'u2']
  labels += [-1, -1]
  labels = np.array(labels)
  sub10 = splits.label_fraction_subset(labels, patients, 0.1, seed=1)
  chosen = {patients[i] for i in sub10}
  # Whole patients: every image of a chosen patient is in.
  assert set(sub10) == {i for i, p in enumerate(patients) if p in chosen}
  per_class = Counter(labels[[patients.index(p) for p in chosen]])
  assert per_class == {0: 20, 1: 2, 2: 1}  # rare class kept (at least one patient)
  assert not {'u1', 'u2'} & chosen
  sub1 = splits.label_fraction_subset(labels, patients, 0.01, seed=1)
  assert set(sub1) <= set(sub10)  # nested across fractions
  np.testing.assert_array_equal(sub10, splits.label_fraction_subset(labels, patients, 0.1, 1))
  assert not np.array_equal(sub10, splits.label_fraction_subset(labels, patients, 0.1, 2))
  full = splits.label_fraction_subset(labels, patients, 1.0)
  assert len(full) == int((labels >= 0).sum())
  with pytest.raises(ValueError, match='fraction'):
    splits.label_fraction_subset(labels, patients, 0.0)


def test_finding_fraction_keeps_a_positive_of_each_finding_and_is_nested():
  rng = np.random.default_rng(0)
  n = 200
  patients = [f'p{i // 2}' for i in range(n)]  # two images per patient
  targets = (rng.random((n, 3)) < [0.5, 0.0, 0.0]).astype(np.float32)
  targets[17, 1] = 1.0  # one rare finding: a single positive image
  targets[rng.random((n, 3)) < 0.1] = np.nan
  targets[40:42] = np.nan  # patient p20: nothing observed, never selected
  previous = set()
  for fraction in (0.01, 0.1, 0.5, 1.0):
    idx = splits.finding_fraction_subset(targets, patients, fraction, seed=3)
    chosen = {patients[i] for i in idx}
    # whole patients, about `fraction` of them plus at most one per finding
    assert all(patients[i] in chosen for i in range(n) if patients[i] in chosen
               and not np.all(np.isnan(targets[i]))) and 'p20' not in chosen
    assert len(chosen) <= max(1, round(fraction * 99)) + 3
    assert 17 in idx  # the rare finding keeps its only positive
    # a finding without any positive stays without one (documented: its AUROC is
    # undefined on a test set without positives, and left out of the mean)
    assert not np.nan_to_num(targets[idx, 2]).any()
    assert previous <= chosen  # nested
    previous = chosen
  with pytest.raises(ValueError, match='label fraction'):
    splits.finding_fraction_subset(targets, patients, 0.0)
