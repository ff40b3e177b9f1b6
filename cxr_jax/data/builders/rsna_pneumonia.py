"""RSNA Pneumonia Detection Challenge (Kaggle 2018): DICOM, 3 classes, opacity boxes.

Layout (manual_dir = the competition folder):

  stage_2_detailed_class_info.csv  patientId,class   (one row per box: repeats)
                                   class in Normal / No Lung Opacity / Not Normal /
                                   Lung Opacity
  stage_2_train_labels.csv         patientId,x,y,width,height,Target (blank box when 0)
  stage_2_train_images/<patientId>.dcm
  stage_2_test_images/<patientId>.dcm   (no labels: the `unlabeled` split)

Each patientId is one radiograph. Boxes are kept as JSON text `[[x, y, w, h], ...]` in
DICOM pixels. Train images are split by patientId hash (split_fractions, split_seed).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('Normal', 'No Lung Opacity / Not Normal', 'Lung Opacity')


@dataclasses.dataclass(eq=False)
class RsnaConfig(_common.CxrConfig):
  """Attributes: include_test_unlabeled: stage_2_test_images in the `unlabeled` split."""
  include_test_unlabeled: bool = True


class RsnaPneumonia(_common.CxrBuilder):
  """RSNA pneumonia: Normal / No Lung Opacity - Not Normal / Lung Opacity, with boxes."""

  BUILDER_CONFIGS = [RsnaConfig(name='default')]
  CLASS_NAMES = CLASS_NAMES
  SSL_SPLIT = 'unlabeled'  # stage_2_test_images (schema.ssl_split)
  DESCRIPTION = ('RSNA Pneumonia Detection Challenge: 26,684 NIH chest radiographs (DICOM) '
                 'with 3 classes and lung opacity boxes.')
  HOMEPAGE = 'https://www.kaggle.com/c/rsna-pneumonia-detection-challenge'
  CITATION = ('Shih et al., Augmenting the NIH Chest Radiograph Dataset with Expert '
              'Annotations of Possible Pneumonia, Radiology: AI 2019.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  kaggle competitions download -c rsna-pneumonia-detection-challenge; unzip; point
  manual_dir at it: stage_2_detailed_class_info.csv, stage_2_train_labels.csv,
  stage_2_train_images/<patientId>.dcm [, stage_2_test_images/]
  """

  def _extra_features(self):
    return {'boxes': tfds.features.Text(), 'num_boxes': tfds.features.Scalar(dtype=np.int64)}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    root = _common.find_root(manual_dir, 'stage_2_detailed_class_info.csv')
    if root is None:
      return []
    classes, first_row = {}, {}
    for where, row, _ in _common.read_csv(root / 'stage_2_detailed_class_info.csv', problems,
                                          required=('patientId', 'class')):
      pid, value = row.get('patientId', '').strip(), row.get('class', '').strip()
      label = _common.label_index(value, CLASS_NAMES, problems, where)
      if label is None:
        continue
      if pid in classes and classes[pid] != label:
        problems.add('bad row', 'stage_2_detailed_class_info.csv',
                     f'patient {pid} has two classes ({CLASS_NAMES[classes[pid]]!r} in '
                     f'{first_row[pid]})', where, skippable=False)
        continue
      classes.setdefault(pid, label)
      first_row.setdefault(pid, where)
    boxes = {}
    for where, row, _ in _common.read_csv(root / 'stage_2_train_labels.csv', problems,
                                          what='box CSV', required=('patientId', 'Target')):
      pid = row.get('patientId', '').strip()
      entry = boxes.setdefault(pid, [])
      if row.get('Target', '').strip() in ('1', '1.0'):
        try:
          entry.append([float(row[k]) for k in ('x', 'y', 'width', 'height')])
        except (KeyError, ValueError):
          problems.add('bad row', 'stage_2_train_labels.csv', 'box is not 4 numbers', where,
                       skippable=False)
    items = []
    for pid, label in classes.items():
      path = root / 'stage_2_train_images' / f'{pid}.dcm'
      b = boxes.get(pid, [])
      items.append(ImageItem(
          id=_common.rel(path, manual_dir), image=str(path),
          split=_common.patient_split(pid, cfg), label=label, patient_id=pid,
          extra={'boxes': json.dumps(b), 'num_boxes': len(b)}, row=first_row[pid]))
    if cfg.include_test_unlabeled:
      for path in sorted((root / 'stage_2_test_images').glob('*.dcm')):
        items.append(ImageItem(
            id=_common.rel(path, manual_dir), image=str(path), split='unlabeled', label=-1,
            patient_id=f'test/{path.stem}', extra={'boxes': '[]', 'num_boxes': 0},
            row='folder stage_2_test_images'))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(RsnaPneumonia, options.pop('config', None), **options)
