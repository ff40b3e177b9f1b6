"""COVID-19 Radiography Database (Kaggle, COVID-QU team): 4 classes with lung masks.

Layout (the zip often nests the root folder twice):

  COVID-19_Radiography_Dataset/
    COVID/{images,masks}/COVID-1.png
    Lung_Opacity/{images,masks}/Lung_Opacity-1.png
    Normal/{images,masks}/Normal-1.png
    Viral Pneumonia/{images,masks}/Viral Pneumonia-1.png
    *.metadata.xlsx  (not needed)

Images are 299x299 PNG (some RGB); masks are 256x256 (possibly 3-channel 0/255) under the
image's file name and are resized to the image before storage. Older releases without
images/ sub-folders (PNGs directly in the class folder, no masks) are read too. There is
no official split and no patient id: each image is its own patient, split by hash.

The root is the folder holding any of the four class folders: a download of some classes
only (e.g. `Viral Pneumonia/{images,masks}`) is read, the absent classes named in a
warning (their label indices stay, with no images). A class folder with masks/ but no
images/ is an error naming the missing folder.
"""
from __future__ import annotations

import logging
from pathlib import Path

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem, MaskPart
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('COVID', 'Lung_Opacity', 'Normal', 'Viral Pneumonia')
_SUFFIXES = ('.png', '.jpg', '.jpeg')
log = logging.getLogger('cxr_jax')


class Covid19Radiography(_common.CxrBuilder):
  """COVID-19 Radiography Database: COVID / Lung_Opacity / Normal / Viral Pneumonia."""

  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = ('COVID-19 Radiography Database (Chowdhury et al., Rahman et al.): 21,165 '
                 'chest X-rays in 4 classes with lung masks.')
  HOMEPAGE = 'https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database'
  CITATION = ('Chowdhury et al., Can AI help in screening Viral and COVID-19 pneumonia? '
              'IEEE Access 2020; Rahman et al., Comput. Biol. Med. 2021.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download covid19-radiography-database from Kaggle, unzip, and point manual_dir at
  COVID-19_Radiography_Dataset/ (or any folder above it):
    {COVID,Lung_Opacity,Normal,Viral Pneumonia}/{images,masks}/<class>-<n>.png
  """

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    root = _common.find_root(manual_dir, CLASS_NAMES, max_depth=4)
    if root is None:
      return []
    absent = [c for c in CLASS_NAMES if not (root / c).is_dir()]
    if absent:
      log.warning('%s: %s has no class folder %s; reading the classes present',
                  self.name, root, ', '.join(repr(c) for c in absent))
    items = []
    for class_dir in sorted(d for d in root.iterdir() if d.is_dir()
                            and d.name not in _common.IGNORED_DIRS):
      if not _holds_images(class_dir):
        continue  # not a class folder: prepared data, a run, notes kept beside the classes
      where = f'class folder {_common.rel(class_dir, manual_dir)!r}'
      label = _common.label_index(class_dir.name, CLASS_NAMES, problems, where)
      if label is None:
        continue
      image_dir = class_dir / 'images'
      has_masks = (class_dir / 'masks').is_dir()
      if has_masks and not image_dir.is_dir():
        problems.add('missing folder', str(image_dir), f'the images of class '
                     f'{class_dir.name!r} (its masks/ folder is there)', skippable=False)
        continue
      if not image_dir.is_dir():
        image_dir = class_dir  # releases before 2021: images directly in the class folder
      for path in sorted(image_dir.iterdir()):
        if path.suffix.lower() not in _SUFFIXES:
          continue
        rid = _common.rel(path, manual_dir)
        patient = f'{class_dir.name}/{path.stem}'
        items.append(ImageItem(
            id=rid, image=str(path), split=_common.patient_split(patient, cfg), label=label,
            patient_id=patient,
            mask=(MaskPart(str(class_dir / 'masks' / path.name)),) if has_masks else (),
            row=where))
    return items


def _holds_images(folder: Path) -> bool:
  """Whether `folder` looks like a class folder: images/ or masks/ in it, or images."""
  return ((folder / 'images').is_dir() or (folder / 'masks').is_dir() or
          any(p.suffix.lower() in _SUFFIXES for p in folder.iterdir()))


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(Covid19Radiography, options.pop('config', None), **options)
