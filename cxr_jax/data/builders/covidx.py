"""COVIDx CXR (COVID-Net): the train/val/test text-file formats.

Layout (manual_dir = the folder holding them):

  train.txt, val.txt (newer releases), test.txt   space separated, no header:
      <patient id> <filename> <label> <source>      (older files: 3 columns, no source)
  train/, val/, test/                                the images (val.txt may point
                                                     into train/ in some releases)

Configs: `binary` (default; COVIDx CXR-3/4 labels negative / positive) and `three_class`
(COVIDx v1-v2 labels normal / pneumonia / COVID-19). A label outside the config's set is
an error that names it and its line (switch config). The official files give the
splits; preparation fails if a patient is in two of them.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem
from cxr_jax.data.validate import Problems

LABEL_SETS = {'binary': ('negative', 'positive'),
              'three_class': ('normal', 'pneumonia', 'COVID-19')}
_ALIASES = {'COVID19': 'COVID-19', 'covid-19': 'COVID-19', 'covid19': 'COVID-19'}
_FILES = (('train.txt', 'train'), ('val.txt', 'val'), ('test.txt', 'test'))


@dataclasses.dataclass(eq=False)
class CovidxConfig(_common.CxrConfig):
  """Attributes: labels: 'binary' or 'three_class'."""
  labels: str = 'binary'


class Covidx(_common.CxrBuilder):
  """COVIDx CXR: patient-wise official splits from train/val/test.txt."""

  BUILDER_CONFIGS = [
      CovidxConfig(name='binary', labels='binary', description='negative / positive'),
      CovidxConfig(name='three_class', labels='three_class',
                   description='normal / pneumonia / COVID-19'),
  ]
  DESCRIPTION = 'COVIDx CXR (Wang et al., COVID-Net): an assembly of public COVID-19 CXR sets.'
  HOMEPAGE = 'https://github.com/lindawangg/COVID-Net'
  CITATION = ('Wang et al., COVID-Net: a tailored deep convolutional neural network design '
              'for detection of COVID-19 cases from chest X-ray images, Sci Rep 2020.')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download COVIDx CXR (Kaggle andyczhao/covidx-cxr2, or build it with COVID-Net's
  create_COVIDx script), and point manual_dir at the folder holding train.txt,
  [val.txt,] test.txt and train/, [val/,] test/.
  """

  @property
  def CLASS_NAMES(self) -> tuple[str, ...]:  # pylint: disable=invalid-name
    return LABEL_SETS[self.builder_config.labels]

  def _extra_features(self):
    return {'source': tfds.features.Text()}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    if cfg.labels not in LABEL_SETS:
      raise ValueError(f'{self.name}: labels must be one of {sorted(LABEL_SETS)}')
    names = LABEL_SETS[cfg.labels]
    root = _common.find_root(manual_dir, 'test.txt') or _common.find_root(manual_dir,
                                                                          'train.txt')
    if root is None:
      return []
    other = [l for k, ls in LABEL_SETS.items() if k != cfg.labels for l in ls]
    items = []
    for file_name, split in _FILES:
      text = _common.read_text(root / file_name)
      if text is None:
        continue
      for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
          continue
        where = f'{file_name} line {line_no}: {line.strip()[:100]!r}'
        parts = line.split()
        # The label is the last token that is a label word; file names may hold spaces.
        known = set(names) | set(other) | set(_ALIASES)
        idx = next((i for i in range(len(parts) - 1, 1, -1) if parts[i] in known), None)
        if len(parts) < 3 or idx is None:
          value = parts[2] if len(parts) >= 3 else line.strip()
          problems.add_label(value, where, names)
          continue
        value = _ALIASES.get(parts[idx], parts[idx])
        if value not in names:
          hint = next(k for k, ls in LABEL_SETS.items() if value in ls)
          problems.add('unknown label', file_name, f'value {value!r}; config '
                       f'{cfg.labels!r} knows {", ".join(names)}: use config={hint!r}',
                       where, skippable=False)
          continue
        patient, filename = parts[0], ' '.join(parts[1:idx])
        source = ' '.join(parts[idx + 1:])
        image = root / split / filename
        if not image.exists() and (root / 'train' / filename).exists():
          image = root / 'train' / filename
        items.append(ImageItem(
            id=_common.rel(image, manual_dir), image=str(image), split=split,
            label=names.index(value), patient_id=patient, extra={'source': source},
            row=where))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(Covidx, options.pop('config', None), **options)
