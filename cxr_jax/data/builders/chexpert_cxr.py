"""CheXpert (v1.0 and v1.0-small), without TensorFlow; named so as not to clash with TFDS's.

Layout (manual_dir = CheXpert-v1.0-small/ or its parent):

  train.csv, valid.csv  Path,Sex,Age,Frontal/Lateral,AP/PA,<14 observations>
  Paths start with the dataset folder name (CheXpert-v1.0-small/train/patient00001/
  study1/view1_frontal.jpg); they are resolved against the folder holding the CSVs, so
  a renamed folder still works.

Observation values: 1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned.
`targets` float32 [14] (OBSERVATIONS order) applies the config's policies:
  uncertainty: 'ignore' (NaN: masked out of the loss), 'zeros' (U-Zeros), 'ones' (U-Ones)
  blank:       'zeros' (default: not mentioned = negative, as in the CheXpert paper's
               labeller output) or 'ignore' (NaN)
`label` is 0 'No Finding' when No Finding is 1.0, 1 'Finding' when any other observation
is positive (after the policy), else -1. Configs: default (U-ignore), zeros, ones, and
unlabeled (every image in the `unlabeled` split, for pretraining). valid.csv (234
images, radiologist labels) is the `test` split; train.csv is split train/val by patient
hash. Option frontal_only drops lateral views.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data import splits as splits_lib
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('No Finding', 'Finding')
OBSERVATIONS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity',
                'Lung Lesion', 'Edema', 'Consolidation', 'Pneumonia', 'Atelectasis',
                'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
                'Support Devices')
_POLICY = {'ignore': math.nan, 'zeros': 0.0, 'ones': 1.0}
_VALUES = {'1.0': 1.0, '1': 1.0, '0.0': 0.0, '0': 0.0, '-1.0': -1.0, '-1': -1.0}


@dataclasses.dataclass(eq=False)
class ChexpertConfig(_common.CxrConfig):
  """Attributes:
    uncertainty: 'ignore' | 'zeros' | 'ones', the value given to -1.0 labels.
    blank: 'zeros' | 'ignore', the value given to blank (not mentioned) labels.
    frontal_only: keep only frontal views.
    unlabeled: put every image in the `unlabeled` split with label -1.
  """
  uncertainty: str = 'ignore'
  blank: str = 'zeros'
  frontal_only: bool = False
  unlabeled: bool = False


class ChexpertCxr(_common.CxrBuilder):
  """CheXpert: 14 observations with an uncertainty policy; an unlabeled view."""

  BUILDER_CONFIGS = [
      ChexpertConfig(name='default', description='U-Ignore: uncertain labels are NaN.'),
      ChexpertConfig(name='zeros', uncertainty='zeros', description='U-Zeros.'),
      ChexpertConfig(name='ones', uncertainty='ones', description='U-Ones.'),
      ChexpertConfig(name='unlabeled', unlabeled=True,
                     description='All images unlabeled, for self-supervised pretraining.'),
  ]
  CLASS_NAMES = CLASS_NAMES
  OBSERVATIONS = OBSERVATIONS
  FINDING_NAMES = OBSERVATIONS  # `targets` order (schema.finding_names)
  DESCRIPTION = ('CheXpert (Irvin et al. 2019): 224,316 chest radiographs of 65,240 '
                 'patients, 14 observations with uncertainty labels.')
  HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/chexpert/'
  CITATION = ('Irvin et al., CheXpert: A Large Chest Radiograph Dataset with Uncertainty '
              'Labels and Expert Comparison, AAAI 2019.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Register and download CheXpert-v1.0-small (or CheXpert-v1.0) from Stanford AIMI, unzip,
  and point manual_dir at CheXpert-v1.0-small/ (or its parent):
    train.csv, valid.csv, train/patientNNNNN/studyN/viewN_frontal.jpg, valid/...
  """

  def _extra_features(self):
    return {'targets': tfds.features.Tensor(shape=(len(OBSERVATIONS),), dtype=np.float32),
            'view': tfds.features.Text(),
            'frontal_lateral': tfds.features.Text()}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    if cfg.uncertainty not in _POLICY or cfg.blank not in ('zeros', 'ignore'):
      raise ValueError(f'{self.name}: uncertainty must be one of {sorted(_POLICY)} and '
                       f'blank zeros or ignore; got {cfg.uncertainty!r}, {cfg.blank!r}')
    root = _common.find_root(manual_dir, 'train.csv')
    if root is None:
      root = _common.find_root(manual_dir, 'valid.csv')
    if root is None:
      return []
    f_train, f_val, _ = cfg.split_fractions
    val_share = f_val / max(f_train + f_val, 1e-12)
    items = []
    for csv_name, official in (('train.csv', 'train'), ('valid.csv', 'test')):
      if not (root / csv_name).exists():
        _common.note_input(root / csv_name)  # one that appears later changes the data
        continue
      for where, row, _ in _common.read_csv(root / csv_name, problems,
                                            required=('Path',) + OBSERVATIONS):
        frontal = row.get('Frontal/Lateral', '').strip()
        if cfg.frontal_only and frontal != 'Frontal':
          continue
        rel_path = Path(row.get('Path', '').strip())
        # Paths begin with the dataset folder's own name; resolve below the CSV folder.
        parts = rel_path.parts[1:] if len(rel_path.parts) > 1 else rel_path.parts
        path = root.joinpath(*parts)
        patient = next((p for p in rel_path.parts if p.startswith('patient')), str(rel_path))
        targets = self._targets(row, where, problems)
        if targets is None:
          continue
        if cfg.unlabeled:
          split, label = 'unlabeled', -1
        else:
          split = official if official == 'test' else splits_lib.assign_split(
              patient, (1 - val_share, val_share), cfg.split_seed, ('train', 'val'))
          label = self._label(targets)
        items.append(ImageItem(
            id=_common.rel(path, manual_dir), image=str(path), split=split, label=label,
            patient_id=patient,
            extra={'targets': targets, 'view': row.get('AP/PA', '').strip(),
                   'frontal_lateral': frontal}, row=where))
    return items

  def _targets(self, row: dict, where: str, problems: Problems):
    cfg = self.builder_config
    targets = np.empty((len(OBSERVATIONS),), np.float32)
    for i, name in enumerate(OBSERVATIONS):
      text = row.get(name, '').strip()
      if not text:
        targets[i] = 0.0 if cfg.blank == 'zeros' else math.nan
      elif text in _VALUES:
        v = _VALUES[text]
        targets[i] = _POLICY[cfg.uncertainty] if v == -1.0 else v
      else:
        problems.add_label(text, where, ['1.0', '0.0', '-1.0', '(blank)'],
                           path=f'column {name!r}')
        return None
    return targets

  @staticmethod
  def _label(targets: np.ndarray) -> int:
    if targets[0] == 1.0:
      return 0
    return 1 if np.nan_to_num(targets[1:], nan=0.0).max(initial=0.0) == 1.0 else -1


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(ChexpertCxr, options.pop('config', None), **options)
