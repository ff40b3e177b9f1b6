"""COVID-QU-Ex (Qatar University): 3 classes, lung masks and, for a subset, infection masks.

Layout (as unpacked from Kaggle; the subset folder is often nested twice):

  Lung Segmentation Data/Lung Segmentation Data/{Train,Val,Test}/
      {COVID-19,Non-COVID,Normal}/{images,lung masks}/<name>.png
  Infection Segmentation Data/Infection Segmentation Data/{Train,Val,Test}/
      {COVID-19,Non-COVID,Normal}/{images,lung masks,infection masks}/<name>.png

Configs: `lung` (default; the 33,920-image lung segmentation subset) and `infection`
(the 5,826-image subset that also has infection masks). The official Train/Val/Test
folders become the train/val/test splits. The dataset has no patient identifiers, so
each image is its own patient (`<class>/<file stem>`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem, MaskPart
from cxr_jax.data.validate import Problems

CLASS_NAMES = ('COVID-19', 'Non-COVID', 'Normal')
_SPLIT_FOLDERS = {'Train': 'train', 'Val': 'val', 'Test': 'test'}
_SUBSET_FOLDERS = {'lung': 'Lung Segmentation Data', 'infection': 'Infection Segmentation Data'}
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


@dataclasses.dataclass(eq=False)
class CovidQuExConfig(_common.CxrConfig):
  """Attributes: subset: 'lung' or 'infection' (which of the two sets to read)."""
  subset: str = 'lung'


class CovidQuEx(_common.CxrBuilder):
  """COVID-QU-Ex chest X-rays with lung (and infection) masks."""

  BUILDER_CONFIGS = [
      CovidQuExConfig(name='lung', subset='lung',
                      description='Lung Segmentation Data: images and lung masks.'),
      CovidQuExConfig(name='infection', subset='infection',
                      description='Infection Segmentation Data: also infection masks.'),
  ]
  CLASS_NAMES = CLASS_NAMES
  DESCRIPTION = ('COVID-QU-Ex: chest X-rays of COVID-19, non-COVID infections and normal '
                 'cases, 256x256, with lung masks and (infection subset) infection masks.')
  HOMEPAGE = 'https://www.kaggle.com/datasets/anasmohammedtahir/covidqu'
  CITATION = ('Tahir et al., COVID-19 infection localization and severity grading from '
              'chest X-ray images, Computers in Biology and Medicine 139 (2021).')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download COVID-QU-Ex from Kaggle (anasmohammedtahir/covidqu), unzip, and point
  manual_dir at the folder holding `Lung Segmentation Data/` and/or
  `Infection Segmentation Data/` (each may be nested twice, as in the zip):
    <subset>/[<subset>/]{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/
        {images,lung masks[,infection masks]}/<name>.png
  """

  def _extra_features(self):
    s = self.builder_config.size
    return {
        'infection_mask': tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8,
                                               encoding='zlib'),
        'has_infection_mask': tfds.features.Scalar(dtype=np.bool_),
    }

  def _subset_root(self, manual_dir: Path) -> Path | None:
    """The folder holding Train/Val/Test of the configured subset."""
    folder = _SUBSET_FOLDERS[self.builder_config.subset]
    top = _common.find_root(manual_dir, folder)
    if top is None:
      return None
    root = top / folder
    # The zip nests the subset folder inside itself.
    while (root / folder).is_dir() and not any((root / s).is_dir() for s in _SPLIT_FOLDERS):
      root = root / folder
    return root

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    root = self._subset_root(manual_dir)
    if root is None:
      other = 'infection' if cfg.subset == 'lung' else 'lung'
      if _common.find_root(manual_dir, _SUBSET_FOLDERS[other]) is not None:
        problems.add('missing folder', _SUBSET_FOLDERS[cfg.subset],
                     f'config {cfg.name!r} reads it; this folder only has '
                     f'{_SUBSET_FOLDERS[other]!r}: use config={other!r}', skippable=False)
      return []
    items = []
    infection = cfg.subset == 'infection'
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
      split = _SPLIT_FOLDERS.get(split_dir.name)
      if split is None:
        continue
      for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        where = _common.rel(class_dir, manual_dir)
        label = _common.label_index(class_dir.name, CLASS_NAMES, problems,
                                    f'class folder {where!r}')
        if label is None:
          continue
        image_dir = class_dir / 'images'
        for image in sorted(image_dir.glob('*')):
          if image.suffix.lower() not in _IMAGE_SUFFIXES:
            continue
          rel = _common.rel(image, manual_dir)
          extra_masks = {'infection_mask': ()}
          if infection:
            extra_masks['infection_mask'] = (
                MaskPart(str(class_dir / 'infection masks' / image.name)),)
          items.append(ImageItem(
              id=rel,
              image=str(image),
              split=split,
              label=label,
              patient_id=f'{class_dir.name}/{image.stem}',
              mask=(MaskPart(str(class_dir / 'lung masks' / image.name)),),
              extra_masks=extra_masks,
              extra={'has_infection_mask': infection},
              row=f'folder {_common.rel(image_dir, manual_dir)!r}',
          ))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(CovidQuEx, options.pop('config', None), **options)
