"""Kermany et al. paediatric chest X-rays (Kaggle "chest_xray"): normal vs pneumonia.

Layout: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg. The Kaggle zip also holds
a nested chest_xray/chest_xray/ copy and __MACOSX/ folders: only the shallowest
{train,val,test} folders are read, so neither is counted twice.

File names carry the patient and the pneumonia subtype:
  person1649_bacteria_4379.jpeg -> patient person1649, subtype bacteria
  person1149_virus_1924.jpeg    -> patient person1149, subtype virus
  person447_virus_921_1.jpeg    -> patient person447, subtype virus (a second image)
  IM-0115-0001.jpeg, NORMAL2-IM-1442-0001.jpeg -> patients IM-0115, NORMAL2-IM-1442
`subtype` (text) and `subtype_label` (0 normal, 1 bacteria, 2 virus) keep it.

Splits: `official` (default) keeps the train/val/test folders (5,216 / 16 / 624 images).
The release appears to number its folders independently: 170 person numbers occur in
both train/ and test/ (e.g. test/PNEUMONIA/person100_bacteria_475.jpeg and
train/PNEUMONIA/person100_virus_184.jpeg, one a bacterial and one a viral pneumonia), so
they cannot be taken as one patient. The official split is kept as published, with a
warning giving the count and an example, recorded in
`info.metadata['reused_patient_ids']`.
Option `split=patient` re-splits all images by person number (split_fractions,
split_seed), so that no person number is in two splits.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data import splits as splits_lib
from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('NORMAL', 'PNEUMONIA')
SUBTYPES = ('normal', 'bacteria', 'virus')
_SPLITS = {'train': 'train', 'val': 'val', 'test': 'test'}
_SUFFIXES = ('.jpeg', '.jpg', '.png')
_PERSON = re.compile(r'^(person\d+)_(bacteria|virus)_\d+(?:_\d+)?$', re.IGNORECASE)
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


class KermanyPneumonia(_common.CxrBuilder):
  """Paediatric chest X-rays, NORMAL / PNEUMONIA, with bacteria/virus subtype."""

  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = ('Kermany et al. (Cell 2018) paediatric chest X-rays from Guangzhou: '
                 'normal vs pneumonia, subtype bacteria / virus from the file names. '
                 'The official folders reuse person numbers across train/ and test/ '
                 '(apparently numbered independently; 170 in the Kaggle release): with split='
                 "official they are listed in metadata['reused_patient_ids']; split="
                 'patient re-splits by person number.')
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
              split=split,
              label=label, patient_id=patient,
              extra={'subtype': subtype,
                     'subtype_label': SUBTYPES.index(subtype) if subtype else -1},
              row=f'folder {_common.rel(class_dir, manual_dir)!r}'))
    return items

  def _check_patient_overlap(self, items):
    """The official folders reuse person numbers: a warning and a metadata record, not an
    error (split=patient gives a split where no person number crosses splits)."""
    if self.builder_config.split != 'official':
      return super()._check_patient_overlap(items)
    reused = splits_lib.patient_overlap(
        {s: [i.patient_id for i in items if i.split == s] for s in _common.LABELED_SPLITS})
    if not reused:
      return None
    files = {}  # patient -> split -> its first file there
    for item in items:
      if item.patient_id in reused:
        files.setdefault(item.patient_id, {}).setdefault(item.split, item.id)
    first = next(iter(reused))
    _common.log.warning(
        '%s: %d patient id(s) from the file names (person numbers) occur in more than one '
        'of the official train/val/test folders, e.g. %s: %s. The folders appear to be '
        'numbered independently, so the official split is kept as published (listed in '
        "info.metadata['reused_patient_ids']); pass --option=split=patient for a split in "
        'which no patient id is in two splits.', self.name, len(reused), first,
        ' and '.join(files[first][s] for s in reused[first]))
    self.info.metadata['reused_patient_ids'] = {
        'count': len(reused),
        'note': 'patient ids (person numbers) found in more than one official folder, '
                'apparently numbered independently; split=patient re-splits by patient id',
        'examples': {p: files[p] for p in list(reused)[:20]},
    }
    return None


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(KermanyPneumonia, options.pop('config', None), **options)
