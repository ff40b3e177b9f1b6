"""The generic fallback: any chest X-ray collection as a CSV or as class sub-folders.

Two layouts (manual_dir = the folder holding them):

  CSV:      a CSV with a header naming `path,label[,patient_id][,mask_path][,split]`;
            paths relative to the CSV's folder (or absolute); blank label = unlabeled;
            split in train/val/test/unlabeled (optional). Config `csv` names the file;
            by default the one .csv file in manual_dir is used.
  folders:  <class>/<image> or {train,val,test}/<class>/<image> (official splits).

Classes are the distinct label values, sorted (numerically when all are integers), or
the config's `class_names` in that order, in which case any other value is an error.
Values that differ only by case, spaces, hyphens or underscores (`normal` / `Normal`)
are an error listing where each spelling occurs; classes with fewer than
`validate.MIN_CLASS_IMAGES` images are named in a warning. A CSV row too short to hold
its path or label is an error naming the file, the line and the field.
Without a split column or split folders, patients are split by hash (split_fractions,
split_seed); without a patient_id column each image is its own patient.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from cxr_jax.data import validate
from cxr_jax.data.builders import _common
from cxr_jax.data.imageio import ImageItem, MaskPart
from cxr_jax.data.schema import UNLABELED
from cxr_jax.data.validate import Problems

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.dcm', '.bmp', '.tif', '.tiff', '.gif', '.webp')
SPLIT_FOLDERS = {'train': 'train', 'val': 'val', 'valid': 'val', 'validation': 'val',
                 'test': 'test', 'unlabeled': 'unlabeled'}
CSV_COLUMNS = ('path', 'label', 'patient_id', 'mask_path', 'split')
CSV_LAYOUT = 'path,label[,patient_id][,mask_path][,split]'


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(_common.CxrConfig):
  """Attributes:
    csv: the CSV file (relative to manual_dir); '' = the one .csv there, else folders.
    class_names: the classes in label order; () = the sorted distinct label values.
  """
  csv: str = ''
  class_names: tuple[str, ...] = ()


class ImageFolder(_common.CxrBuilder):
  """Chest X-rays listed in a CSV (path,label[,patient_id][,mask_path]) or in class folders."""

  BUILDER_CONFIGS = [ImageFolderConfig(name='default')]
  DESCRIPTION = 'A user collection of chest X-rays: a CSV of paths and labels, or class folders.'
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point manual_dir at either
    - a folder holding one CSV with header path,label[,patient_id][,mask_path][,split]
      (paths relative to the CSV; blank label = unlabeled), or
    - class sub-folders <class>/<image>, optionally inside train/ val/ test/.
  """

  @property
  def CLASS_NAMES(self) -> tuple[str, ...]:  # pylint: disable=invalid-name
    """Config classes, else those found while preparing, else those of the prepared data."""
    cfg = self.builder_config
    if cfg.class_names:
      return tuple(cfg.class_names)
    found = getattr(self, '_found_classes', None)
    if found is not None:
      return found
    path = os.path.join(os.fspath(self.data_dir), 'metadata.json')
    if os.path.exists(path):
      with open(path) as f:
        return tuple(json.load(f).get('class_names', ()))
    return ()

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    csv_path = None
    if cfg.csv:
      csv_path = manual_dir / cfg.csv
      if not csv_path.exists():
        problems.add('missing file', str(csv_path), 'the CSV named by config csv',
                     skippable=False)
        return []
    else:
      found = sorted(manual_dir.glob('*.csv'))
      if len(found) > 1:
        problems.add('ambiguous CSV', str(manual_dir), 'several CSV files: '
                     f'{[p.name for p in found]}; name one with config csv=...',
                     skippable=False)
        return []
      csv_path = found[0] if found else None
    raw = (self._from_csv(manual_dir, csv_path, problems) if csv_path
           else self._from_folders(manual_dir))
    return self._label(raw, problems)

  def _from_csv(self, manual_dir: Path, csv_path: Path, problems: Problems):
    rows = _common.read_csv(csv_path, problems, required=('path', 'label'),
                            expected=CSV_LAYOUT)
    out = []
    for where, row, _ in rows:
      path = (csv_path.parent / row['path'].strip()).resolve()
      mask = row.get('mask_path', '').strip()
      split = row.get('split', '').strip().lower()
      if split and split not in SPLIT_FOLDERS:
        problems.add('bad row', str(csv_path), f'split {split!r} is not one of '
                     f'{sorted(set(SPLIT_FOLDERS.values()))}', where, skippable=False)
        continue
      out.append(dict(
          path=path, label=row['label'].strip(), where=where,
          patient=row.get('patient_id', '').strip(),
          mask=(csv_path.parent / mask).resolve() if mask else None,
          split=SPLIT_FOLDERS.get(split)))
    return out

  def _from_folders(self, manual_dir: Path):
    top = [d for d in sorted(manual_dir.iterdir()) if d.is_dir()
           and d.name not in _common.IGNORED_DIRS]
    split_dirs = [d for d in top if d.name.lower() in SPLIT_FOLDERS]
    groups = ([(SPLIT_FOLDERS[d.name.lower()], d) for d in split_dirs] if split_dirs
              else [(None, manual_dir)])
    out = []
    for split, base in groups:
      for class_dir in sorted(d for d in base.iterdir() if d.is_dir()
                              and d.name not in _common.IGNORED_DIRS):
        for path in sorted(class_dir.rglob('*')):
          if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            label = '' if split == 'unlabeled' else class_dir.name
            out.append(dict(path=path, label=label, patient='', mask=None, split=split,
                            where=f'class folder {_common.rel(class_dir, manual_dir)!r}'))
    return out

  def _label(self, raw: list[dict], problems: Problems) -> list[ImageItem]:
    cfg = self.builder_config
    values = sorted({r['label'] for r in raw if r['label']})
    spellings = [(r['label'], r['where']) for r in raw if r['label']]
    if cfg.class_names:
      names = tuple(cfg.class_names)
      # Values spelled otherwise in the data are unknown labels (with a did-you-mean).
      spellings = [(c, 'option class_names') for c in names]
    elif all(v.lstrip('-').isdigit() for v in values):
      names = tuple(sorted(values, key=int))
    else:
      names = tuple(values)
    validate.check_label_spellings(spellings, problems)
    self._found_classes = names
    manual_dir = Path(problems.manual_dir)
    items = []
    for r in raw:
      label = UNLABELED
      if r['label']:
        label = _common.label_index(r['label'], names, problems, r['where'])
        if label is None:
          continue
      rid = _common.rel(r['path'], manual_dir)
      patient = r['patient'] or rid
      split = r['split'] or ('unlabeled' if label == UNLABELED
                             else _common.patient_split(patient, cfg))
      items.append(ImageItem(
          id=rid, image=str(r['path']), split=split, label=label, patient_id=patient,
          mask=(MaskPart(str(r['mask'])),) if r['mask'] else (), row=r['where']))
    return items


def make_config(**options) -> _common.CxrConfig:
  """The config for `options` (config=NAME picks the starting config), as the training
  pipeline's data.options give them, e.g. 'config=NAME,size=512'."""
  return _common.config_with(ImageFolder, options.pop('config', None), **options)
