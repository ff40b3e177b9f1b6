"""NIH ChestX-ray14: 112,120 frontal radiographs, 14 findings (multi-label).

Layout (manual_dir = the folder holding the CSV):

  Data_Entry_2017_v2020.csv  Image Index,Finding Labels,Follow-up #,Patient ID,
                             Patient Age,Patient Gender,View Position,
                             OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]
                             -- 9 header names but 11 fields per row: the bracketed
                             names hold two values each, so rows are read by position.
  (or the older Data_Entry_2017.csv: trailing comma in the header, zero-padded values
   such as patient 00000001 and age 058Y)
  train_val_list.txt, test_list.txt   the official patient-wise split, one name a line
  images/*.png  or  images_001/images/*.png ... images_012/images/*.png (Kaggle)

`targets` is float32 [14] (1 = finding present, 0 = absent) in FINDINGS order;
`label` is 0 for 'No Finding' and 1 for any finding (CLASS_NAMES). Official test_list
images form `test`; train_val_list images are split train/val by patient hash (the val
share is split_fractions[1] / (split_fractions[0] + split_fractions[1])). Without the
list files, all images are split by patient hash.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data import splits as splits_lib
from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('No Finding', 'Finding')
FINDINGS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule',
            'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis',
            'Pleural_Thickening', 'Hernia')
CSV_NAMES = ('Data_Entry_2017_v2020.csv', 'Data_Entry_2017.csv')


def _read_list(path: Path) -> set[str] | None:
  text = _common.read_text(path)
  if text is None:
    return None
  return {line.strip() for line in text.splitlines() if line.strip()}


class NihCxr14(_common.CxrBuilder):
  """NIH ChestX-ray14 with the official split and 14 multi-label targets."""

  CLASS_NAMES = CLASS_NAMES
  FINDINGS = FINDINGS
  FINDING_NAMES = FINDINGS  # `targets` order (schema.finding_names)
  DESCRIPTION = ('NIH ChestX-ray14 (Wang et al. 2017): 112,120 frontal chest X-rays of '
                 '30,805 patients, 14 text-mined findings.')
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'
  CITATION = ('Wang et al., ChestX-ray8: Hospital-scale Chest X-ray Database and '
              'Benchmarks, CVPR 2017.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download from https://nihcc.app.box.com/v/ChestXray-NIHCC (untar images_*.tar.gz) or
  Kaggle nih-chest-xrays/data, and point manual_dir at the folder holding
  Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv), train_val_list.txt, test_list.txt and
  images/ (or images_001/images/ ... images_012/images/).
  """

  def _extra_features(self):
    return {'targets': tfds.features.Tensor(shape=(len(FINDINGS),), dtype=np.float32),
            'view': tfds.features.Text(),
            'finding_labels': tfds.features.Text()}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    root = None
    for name in CSV_NAMES:
      root = _common.find_root(manual_dir, name)
      if root is not None:
        csv_path = root / name
        break
    if root is None:
      return []
    images = {}
    for folder in sorted(root.glob('images*')):
      if folder.is_dir():
        for p in folder.rglob('*.png'):
          images.setdefault(p.name, p)
    test_list = _read_list(root / 'test_list.txt')
    train_list = _read_list(root / 'train_val_list.txt')
    f_train, f_val, _ = cfg.split_fractions
    val_share = f_val / max(f_train + f_val, 1e-12)
    items = []
    # Positional parsing: the header has 9 names but rows have 11 fields (v2020), and
    # the old header ends in a trailing comma; the first 7 fields agree in both.
    for where, _, fields in _common.read_csv(csv_path, problems):
      if len(fields) < 7:
        problems.add('bad row', csv_path.name, f'{len(fields)} fields, expected >= 7',
                     where, skippable=False)
        continue
      name, findings, _, patient, _, _, view = (f.strip() for f in fields[:7])
      patient = str(int(patient)) if patient.isdigit() else patient  # 00000001 -> 1
      targets = np.zeros((len(FINDINGS),), np.float32)
      ok = True
      for f in findings.split('|'):
        f = f.strip()
        if f == 'No Finding':
          continue
        if f not in FINDINGS:
          problems.add_label(f, where, ('No Finding',) + FINDINGS)
          ok = False
          continue
        targets[FINDINGS.index(f)] = 1.0
      if not ok:
        continue
      if test_list is not None and name in test_list:
        split = 'test'
      elif train_list is not None and (test_list is not None or name in train_list):
        split = splits_lib.assign_split(patient, (1 - val_share, val_share), cfg.split_seed,
                                        ('train', 'val'))
      else:
        split = _common.patient_split(patient, cfg)
      path = images.get(name, root / 'images' / name)
      items.append(ImageItem(
          id=_common.rel(path, manual_dir), image=str(path), split=split,
          label=int(targets.any()), patient_id=patient,
          extra={'targets': targets, 'view': view, 'finding_labels': findings}, row=where))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(NihCxr14, options.pop('config', None), **options)
