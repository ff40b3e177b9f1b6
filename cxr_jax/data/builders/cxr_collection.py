"""The COVID-19 image data collection (ieee8023) `metadata.csv` layout, and its relatives.

Layouts read (manual_dir = the folder holding metadata.csv, or a parent of it):

  ieee8023/covid-chestxray-dataset:  metadata.csv (patientid, offset, sex, age, finding,
      ..., view, modality, ..., folder, filename, ...), images under <folder>/ (images/).
  Actualmed / Figure1 COVID sets:     metadata.csv naming the image column `imagename`,
      or giving only `patientid` with the image at images/<patientid>.{jpg,jpeg,png}.
  COVID-19 chest X-ray segmentations (GeneralBlockchain): the above plus structure.csv
      and masks/: each mask is cropped to its bounding box and is pasted back at
      (Left, Top) on an image-sized canvas; the lung mask is the union of the 'Left Lung'
      and 'Right Lung' structures. Only the images listed in structure.csv are read
      (metadata.csv there covers the whole collection).

Labels (`finding`): 'No Finding' (0), 'COVID-19' (1, any finding naming COVID-19, e.g.
'Pneumonia/Viral/COVID-19' or 'COVID-19, ARDS'), 'Other' (2, every other finding:
bacterial, viral, fungal pneumonias, ARDS...). Blank, 'todo' and 'Unknown' findings
become unlabeled examples in the `unlabeled` split, for self-supervised pretraining.
CT rows (modality CT, folder volumes/) are left out. Labeled images are split by patient
(config split_fractions / split_seed). The raw finding text is kept in `finding`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem, MaskPart
from cxr_jax.data.schema import UNLABELED
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('No Finding', 'COVID-19', 'Other')
UNLABELED_FINDINGS = ('', 'todo', 'unknown')
NO_FINDING = ('no finding', 'normal', 'no findings')
LUNG_STRUCTURES = ('Left Lung', 'Right Lung')
OPACITY_STRUCTURES = ('Ground Glass Opacities', 'Consolidation')
DEVICE_STRUCTURES = ('Tubings', 'Endotracheal Tube', 'Central Venous Line',
                     'Nosogastric Tube', 'Monitoring Probes')
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


def finding_label(finding: str) -> int:
  """Class index of an ieee8023 `finding` value; UNLABELED for blank/todo/unknown."""
  text = finding.strip()
  if text.lower() in UNLABELED_FINDINGS:
    return UNLABELED
  if text.lower() in NO_FINDING:
    return 0
  tokens = [t.strip().lower() for t in re.split(r'[/,;]', text)]
  if 'covid-19' in tokens or 'covid19' in tokens or 'covid' in tokens:
    return 1
  return 2


@dataclasses.dataclass(eq=False)
class CxrCollectionConfig(_common.CxrConfig):
  """Attributes: frontal_only: keep only PA / AP / AP Supine / AP Erect views."""
  frontal_only: bool = False


class CxrCollection(_common.CxrBuilder):
  """ieee8023-format COVID-19 collections; with the segmentation set's structures."""

  BUILDER_CONFIGS = [CxrCollectionConfig(name='default')]
  CLASS_NAMES = CLASS_NAMES
  SSL_SPLIT = 'unlabeled'  # images without a usable label (schema.ssl_split)
  EXTRA_MASKS = 'device,opacity'  # device_mask, opacity_mask (schema.extra_masks)
  DESCRIPTION = ('COVID-19 image data collection (ieee8023 metadata.csv format; also the '
                 'Actualmed, Figure1 and GeneralBlockchain segmentation sets).')
  HOMEPAGE = 'https://github.com/ieee8023/covid-chestxray-dataset'
  CITATION = ('Cohen et al., COVID-19 Image Data Collection: Prospective Predictions Are '
              'the Future, MELBA 2020.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  git clone https://github.com/ieee8023/covid-chestxray-dataset (or the Actualmed /
  Figure1 COVID chest X-ray repositories, or the GeneralBlockchain
  covid-19-chest-xray-segmentations-dataset) and point manual_dir at the clone:
    metadata.csv, images/<filename> [, structure.csv, masks/<sha>_<id>.png]
  """

  def _extra_features(self):
    s = self.builder_config.size
    mask = lambda: tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding='zlib')
    return {
        'finding': tfds.features.Text(),
        'view': tfds.features.Text(),
        'opacity_mask': mask(),
        'device_mask': mask(),
        'has_structures': tfds.features.Scalar(dtype=np.bool_),
    }

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    root = _common.find_root(manual_dir, 'metadata.csv')
    if root is None:
      return []
    rows = _common.read_csv(root / 'metadata.csv', problems, required=('finding',))
    if not rows:
      return []
    header = set(rows[0][1])
    structures = self._structures(root, problems)
    listed = None if structures is None else set(structures)
    items, seen = [], set()
    for where, row, _ in rows:
      modality = row.get('modality', '').strip().lower()
      if modality and 'x-ray' not in modality and 'xray' not in modality:
        continue  # CT volumes share the CSV; this builder reads radiographs.
      if row.get('folder', '').strip() == 'volumes':
        continue
      view = row.get('view', '').strip()
      if cfg.frontal_only and not view.upper().startswith(('PA', 'AP')):
        continue
      image = self._image_path(root, row, header)
      if image is None:
        problems.add('bad row', 'metadata.csv', 'no filename/imagename/patientid value',
                     where)
        continue
      if listed is not None and image.name not in listed:
        continue
      seen.add(image.name)
      items.append(self._item(manual_dir, image, row, where, view,
                              structures.get(image.name) if structures else None))
    if structures is not None:
      # Segmentation images without a metadata row: still images with masks, unlabeled.
      for name in sorted(set(structures) - seen):
        image = root / 'images' / name
        items.append(self._item(manual_dir, image, {}, f'structure.csv (image {name!r})',
                                '', structures[name]))
    return items

  def _item(self, manual_dir, image: Path, row: dict, where: str, view: str,
            parts: Optional[dict]) -> ImageItem:
    finding = row.get('finding', '').strip()
    label = finding_label(finding)
    patient = row.get('patientid', '').strip() or image.stem
    split = 'unlabeled' if label == UNLABELED else _common.patient_split(patient,
                                                                        self.builder_config)
    parts = parts or {}
    return ImageItem(
        id=_common.rel(image, manual_dir),
        image=str(image),
        split=split,
        label=label,
        patient_id=patient,
        mask=tuple(parts.get('lung', ())),
        extra_masks={'opacity_mask': tuple(parts.get('opacity', ())),
                     'device_mask': tuple(parts.get('device', ()))},
        extra={'finding': finding, 'view': view, 'has_structures': bool(parts)},
        row=where,
    )

  @staticmethod
  def _image_path(root: Path, row: dict, header: set) -> Optional[Path]:
    folder = row.get('folder', '').strip() or 'images'
    for column in ('filename', 'imagename'):
      if column in header and row.get(column, '').strip():
        return root / folder / row[column].strip()
    patient = row.get('patientid', '').strip()
    if not patient:
      return None
    # Figure1-style: the image id is the patient id; find its suffix on disk.
    candidates = [root / folder / f'{patient}{s}' for s in _IMAGE_SUFFIXES]
    for c in candidates:
      if c.exists():
        return c
    return candidates[0]

  @staticmethod
  def _structures(root: Path, problems: Problems) -> Optional[dict]:
    """image file name -> {'lung'|'opacity'|'device': [MaskPart]} from structure.csv."""
    path = root / 'structure.csv'
    if not path.exists():
      _common.note_input(path)  # one that appears later changes the data
      return None
    out = {}
    for where, row, _ in _common.read_csv(path, problems, what='structure list',
                                          required=('Filename', 'Template Name')):
      name = row.get('Filename', '').strip()
      kind = row.get('Template Name', '').strip()
      entry = out.setdefault(name, {})
      group = ('lung' if kind in LUNG_STRUCTURES else
               'opacity' if kind in OPACITY_STRUCTURES else
               'device' if kind in DEVICE_STRUCTURES else None)
      if group is None or not row.get('Mask', '').strip():
        continue  # Rows without a mask file are whole-image tags, nothing to paste.
      try:
        offset = (int(float(row['Left'])), int(float(row['Top'])))
      except (KeyError, ValueError):
        problems.add('bad row', 'structure.csv', 'Left/Top are not numbers', where,
                     skippable=False)
        continue
      entry.setdefault(group, []).append(MaskPart(str(root / row['Mask'].strip()), offset))
    return out


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(CxrCollection, options.pop('config', None), **options)
