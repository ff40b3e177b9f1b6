"""Kermany et al. paediatric chest X-rays (Kaggle "chest_xray"): normal vs pneumonia.

Layout: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg. The Kaggle zip also holds
a nested chest_xray/chest_xray/ copy and __MACOSX/ folders: only the shallowest
{train,val,test} folders are read, so neither is counted twice.

File names carry the patient and the pneumonia subtype:
  person1649_bacteria_4379.jpeg -> patient person1649, subtype bacteria
  person1149_virus_1924.jpeg    -> patient person1149, subtype virus
  IM-0115-0001.jpeg, NORMAL2-IM-1442-0001.jpeg -> patients IM-0115, NORMAL2-IM-1442
`subtype` (text) and `subtype_label` (0 normal, 1 bacteria, 2 virus) keep it.

Splits: `official` (default) keeps the train/val/test folders (val has 16 images);
`patient` re-splits all images by patient hash (split_fractions, split_seed). Either way
preparation fails if a patient is in two splits.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
SUBTYPES = ('normal', 'bacteria', 'virus')
_SPLITS = {'train': 'train', 'val': 'val', 'test': 'test'}
_SUFFIXES = ('.jpeg', '.jpg', '.png')
_PERSON = re.compile(r'^(person\d+)_(bacteria|virus)_\d+$', re.IGNORECASE)
_IM = re.compile(r'^(.*IM-\d+)-\d+(?:-\d+)?$', re.IGNORECASE)


def parse_name(stem: str) -> tuple[str, str]:
  """(patient id, subtype) from a Kermany file stem; subtype '' when not encoded."""
  m = _PERSON.match(stem)
  if m:
    return m.group(1).lower(), m.group(2).lower()
  m = _IM.match(stem)
  if m:
    return m.group(1), ''
  return stem, ''


@dataclasses.dataclass(eq=False)
class KermanyConfig(_common.CxrConfig):
  """Attributes: split: 'official' (the folders) or 'patient' (re-split by patient)."""
  split: str = 'official'


class KermanyPneumonia(_common.CxrBuilder):
  """Paediatric chest X-rays, NORMAL / PNEUMONIA, with bacteria/virus subtype."""

  BUILDER_CONFIGS = [KermanyConfig(name='default')]
  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = ('Kermany et al. (Cell 2018) paediatric chest X-rays from Guangzhou: '
                 'normal vs pneumonia, subtype bacteria / virus from the file names.')
  HOMEPAGE = 'https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia'
  CITATION = ('Kermany et al., Identifying Medical Diagnoses and Treatable Diseases by '
              'Image-Based Deep Learning, Cell 172(5), 2018.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download chest-xray-pneumonia from Kaggle, unzip, and point manual_dir at the folder
  holding chest_xray/ (or at chest_xray/ itself):
    chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg
  """

  def _extra_features(self):
    return {'subtype': tfds.features.Text(),
            'subtype_label': tfds.features.Scalar(dtype=np.int64)}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    if cfg.split not in ('official', 'patient'):
      raise ValueError(f'{self.name}: split must be official or patient, got {cfg.split!r}')
    root = _common.find_root(manual_dir, 'train')
    if root is None or not any((root / s).is_dir() for s in _SPLITS):
      return []
    items = []
    for folder, split in _SPLITS.items():
      split_dir = root / folder
      if not split_dir.is_dir():
        continue
      for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()
                              and d.name not in _common.IGNORED_DIRS):
        label = _common.label_index(class_dir.name, CLASS_NAMES, problems,
                                    f'class folder {_common.rel(class_dir, manual_dir)!r}')
        if label is None:
          continue
        for path in sorted(class_dir.iterdir()):
          if path.suffix.lower() not in _SUFFIXES or path.name.startswith('._'):
            continue
          patient, subtype = parse_name(path.stem)
          if label == 0:
            subtype = 'normal'
          items.append(ImageItem(
              id=_common.rel(path, manual_dir), image=str(path),
              split=split if cfg.split == 'official' else _common.patient_split(patient, cfg),
              label=label, patient_id=patient,
              extra={'subtype': subtype,
                     'subtype_label': SUBTYPES.index(subtype) if subtype else -1},
              row=f'folder {_common.rel(class_dir, manual_dir)!r}'))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(KermanyPneumonia, options.pop('config', None), **options)
