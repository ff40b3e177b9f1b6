"""SIIM-FISABIO-RSNA COVID-19 Detection (Kaggle 2021): DICOM, 4 study-level classes.

Layout (manual_dir = the competition folder):

  train_study_level.csv   id,Negative for Pneumonia,Typical Appearance,
                          Indeterminate Appearance,Atypical Appearance
                          (id = <StudyInstanceUID>_study, exactly one 1 per row)
  train_image_level.csv   id,boxes,label,StudyInstanceUID
                          (id = <image id>_image; boxes a Python literal list of dicts
                          x,y,width,height in DICOM pixels, blank when none)
  train/<StudyInstanceUID>/<SeriesInstanceUID>/<image id>.dcm
  test/<StudyInstanceUID>/<SeriesInstanceUID>/<image id>.dcm   (labels hidden)

Every image takes its study's class. Boxes are kept as metadata: `boxes` is JSON text
`[[x, y, width, height], ...]` in the original DICOM pixel frame, `num_boxes` their
count. The test labels are hidden, so train studies are split train/val/test by study
hash (split_fractions, split_seed); the test/ images go to the `unlabeled` split
(option include_test_unlabeled) for self-supervised pretraining. DICOM pixels go through
the VOI LUT, MONOCHROME1 inversion and BitsStored scaling of `cxr_jax.data.dicom`.
"""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('negative', 'typical', 'indeterminate', 'atypical')
STUDY_COLUMNS = ('Negative for Pneumonia', 'Typical Appearance', 'Indeterminate Appearance',
                 'Atypical Appearance')


def parse_boxes(text: str) -> list[list[float]]:
  """[[x, y, w, h], ...] from the CSV's Python-literal list of dicts ('' or nan: none)."""
  text = (text or '').strip()
  if not text or text.lower() == 'nan':
    return []
  value = ast.literal_eval(text)  # single-quoted dicts: not JSON
  return [[float(b['x']), float(b['y']), float(b['width']), float(b['height'])]
          for b in value]


@dataclasses.dataclass(eq=False)
class SiimConfig(_common.CxrConfig):
  """Attributes: include_test_unlabeled: test/ images in the `unlabeled` split."""
  include_test_unlabeled: bool = True


class SiimCovid19(_common.CxrBuilder):
  """SIIM-FISABIO-RSNA COVID-19: negative / typical / indeterminate / atypical."""

  BUILDER_CONFIGS = [SiimConfig(name='default')]
  CLASS_NAMES = CLASS_NAMES
  SSL_SPLIT = 'unlabeled'  # the test/ images, without labels (schema.ssl_split)
  DESCRIPTION = ('SIIM-FISABIO-RSNA COVID-19 Detection: chest radiographs (DICOM) with '
                 'study-level appearance classes and opacity boxes.')
  HOMEPAGE = 'https://www.kaggle.com/c/siim-covid19-detection'
  CITATION = ('Lakhani et al., The 2021 SIIM-FISABIO-RSNA Machine Learning COVID-19 '
              'Challenge, J Digit Imaging 2023.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  kaggle competitions download -c siim-covid19-detection; unzip; point manual_dir at it:
    train_study_level.csv, train_image_level.csv,
    train/<StudyInstanceUID>/<SeriesInstanceUID>/<image id>.dcm, test/...
  Compressed DICOMs need a pixel plugin: pip install pylibjpeg pylibjpeg-libjpeg
  pylibjpeg-openjpeg (or python-gdcm).
  """

  def _extra_features(self):
    return {'boxes': tfds.features.Text(), 'num_boxes': tfds.features.Scalar(dtype=np.int64),
            'study_id': tfds.features.Text()}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    root = _common.find_root(manual_dir, 'train_study_level.csv')
    if root is None:
      return []
    study_label = {}
    for where, row, _ in _common.read_csv(root / 'train_study_level.csv', problems,
                                          required=('id',) + STUDY_COLUMNS):
      study = row.get('id', '').strip()
      if study.endswith('_study'):
        study = study[:-len('_study')]
      values = [row.get(c, '').strip() for c in STUDY_COLUMNS]
      try:
        ones = [i for i, v in enumerate(values) if float(v) == 1.0]
      except ValueError:
        problems.add_label(','.join(values), where, ['one-hot 0/1 columns'])
        continue
      if len(ones) != 1:
        problems.add_label(','.join(values), where, ['exactly one 1 among ' +
                                                     ', '.join(STUDY_COLUMNS)])
        continue
      study_label[study] = ones[0]
    dicoms = {p.stem: p for p in sorted((root / 'train').rglob('*.dcm'))}
    items = []
    for where, row, _ in _common.read_csv(root / 'train_image_level.csv', problems,
                                          required=('id', 'StudyInstanceUID')):
      image_id = row.get('id', '').strip()
      image_id = image_id[:-len('_image')] if image_id.endswith('_image') else image_id
      study = row.get('StudyInstanceUID', '').strip()
      if study not in study_label:
        problems.add('bad row', 'train_image_level.csv',
                     f'study {study!r} has no row in train_study_level.csv', where,
                     skippable=False)
        continue
      try:
        boxes = parse_boxes(row.get('boxes', ''))
      except (ValueError, SyntaxError, KeyError, TypeError) as e:
        problems.add('bad row', 'train_image_level.csv', f'boxes not parseable: {e}', where,
                     skippable=False)
        continue
      path = dicoms.get(image_id)
      if path is None:  # Reported as a missing file with its row by the file check.
        path = root / 'train' / study / '<series>' / f'{image_id}.dcm'
      items.append(ImageItem(
          id=_common.rel(path, manual_dir), image=str(path),
          split=_common.patient_split(study, cfg), label=study_label[study],
          patient_id=study,
          extra={'boxes': json.dumps(boxes), 'num_boxes': len(boxes), 'study_id': study},
          row=where))
    if cfg.include_test_unlabeled:
      for path in sorted((root / 'test').rglob('*.dcm')):
        study = path.relative_to(root / 'test').parts[0]
        items.append(ImageItem(
            id=_common.rel(path, manual_dir), image=str(path), split='unlabeled', label=-1,
            patient_id=f'test/{study}',
            extra={'boxes': '[]', 'num_boxes': 0, 'study_id': study},
            row=f'folder {_common.rel(path.parent, manual_dir)!r}'))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(SiimCovid19, options.pop('config', None), **options)
