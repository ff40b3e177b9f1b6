"""What every real-dataset builder shares: config, validation, decoding, writing.

A dataset builder only says how its download is laid out. It subclasses `CxrBuilder`
and implements `_list_items(manual_dir, problems) -> [ImageItem]`, parsing CSVs and
folder names into examples (image path, label, patient, split, mask files, extra
fields) and recording unknown label values in `problems`. It reads label files (CSVs,
split lists) only through `read_csv` / `read_text` (`note_input` for one it may do
without), so that `CxrBuilder.input_files`
knows every file a preparation reads: the images and masks of its items and those label
files. This module then

  1. checks every listed file before anything is written (`validate.check_items`) and
     stops with one error naming all problems -- or, with `skip_bad_files`, leaves the bad
     files out and lists them in `info.metadata['skipped_files']`;
  2. checks that no patient is in two of train/val/test (option `split=patient`
     re-splits every labeled image by patient hash instead of the dataset's own split),
     and warns about classes with fewer than `validate.MIN_CLASS_IMAGES` images;
  3. decodes images (PNG/JPEG/DICOM) and masks to the shared record layout
     (`schema.core_features`) in worker processes when the dataset is large enough;
  4. lets TFDS write ArrayRecord files. TFDS writes into an `incomplete.*` folder and
     renames it only after every split is written, so a preparation that fails at any
     point leaves no folder that reads as a complete dataset. The metadata records what
     the data was built from (`identity`: source folder, a fingerprint of the files
     `input_files` lists, exact options; see `cxr_jax/data/identity.py`).
"""
from __future__ import annotations

import concurrent.futures
import contextvars
import csv
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from cxr_jax.data import identity
from cxr_jax.data import imageio
from cxr_jax.data import splits as splits_lib
from cxr_jax.data import validate
from cxr_jax.data.imageio import ImageItem, MaskPart  # noqa: F401  (re-exported)
from cxr_jax.data.schema import UNLABELED, core_features
from cxr_jax.data.validate import DataValidationError, Problems

# Splits in the order users expect them listed.
SPLIT_ORDER = ('unlabeled', 'train', 'val', 'test')
# Splits whose patients must be disjoint. 'unlabeled' images serve self-supervised
# pretraining only; they carry no labels to leak.
LABELED_SPLITS = ('train', 'val', 'test')
# Below this many examples, starting worker processes costs more than it saves.
MIN_ITEMS_FOR_POOL = 64
# Folders that zip tools add and that never hold dataset images.
IGNORED_DIRS = ('__MACOSX',)
# Values of the `split` option.
SPLIT_MODES = ('official', 'patient')
# The part of a config name that spells out changed options (a hash of their exact values
# follows it) is cut to this length.
MAX_READABLE_NAME = 48
log = logging.getLogger('cxr_jax')
# the label files read by `read_csv` / `read_text` while `CxrBuilder.input_files` lists a
# dataset (None outside it)
_LABEL_FILES: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar(
    'cxr_jax_label_files', default=None)


def note_input(path: Path) -> None:
  """Counts a label or list file among the dataset's input files (`input_files`), read or
  absent (one that appears later changes the dataset). `read_csv` and `read_text` call
  it; a builder calls it for a file whose absence it accepts without reading it."""
  files = _LABEL_FILES.get()
  if files is not None:
    files.append(os.fspath(path))


def read_text(path: Path) -> Optional[str]:
  """The text of a label or list file of the dataset, None when there is none (either way
  counted in its input files: a list that appears later changes the dataset)."""
  note_input(path)
  path = Path(path)
  return path.read_text(encoding='utf-8-sig', errors='replace') if path.is_file() else None


@dataclasses.dataclass(eq=False)
class CxrConfig(tfds.core.BuilderConfig):
  """Options common to every real chest X-ray builder.

  Attributes:
    size: storage side S of the square images and masks.
    skip_bad_files: leave missing/unreadable files out (counted and listed in
      `info.metadata['skipped_files']`) instead of stopping with an error.
    split_fractions: (train, val, test) fractions of patients, for datasets without an
      official split.
    split_seed: seed of the patient hash that assigns those splits.
    split: 'official' (the dataset's own split where it has one: folders, list files,
      a split column; else the patient hash) or 'patient' (every labeled image re-split
      by patient hash with split_fractions and split_seed).
  """
  size: int = 256
  skip_bad_files: bool = False
  split_fractions: tuple[float, float, float] = splits_lib.DEFAULT_FRACTIONS
  split_seed: int = 0
  split: str = 'official'


_BASE_FIELDS = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}


def config_options(config: CxrConfig) -> dict[str, Any]:
  """The dataset options of a config (everything but TFDS's name/version/...)."""
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name not in _BASE_FIELDS}


def config_with(builder_cls, config: Optional[str] = None, **overrides) -> CxrConfig:
  """A builder config with some options changed, named after the changes.

  The name decides the folder the prepared data lives in
  (`data_dir/<dataset>/<config name>/<version>`): the changed options in readable form
  (cut to MAX_READABLE_NAME characters) and a hash of their exact values, e.g.
  `default_size-512_split_seed-3_5f2a9c1e`, so different options never share a folder
  even where their readable forms agree (`COVID-19` / `COVID19`, `a/b.csv` / `ab.csv`).

  Args:
    builder_cls: a CxrBuilder subclass.
    config: the name of the config to start from (default: the builder's first).
    **overrides: option values, e.g. size=512, uncertainty='zeros'.

  Returns:
    the named config itself when nothing changes, else a new CxrConfig.
  """
  configs = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
  base = configs[config] if config else builder_cls.BUILDER_CONFIGS[0]
  if config and config not in configs:
    raise ValueError(f'{builder_cls.name}: no config {config!r}; known: {sorted(configs)}')
  options = config_options(base)
  unknown = sorted(set(overrides) - set(options))
  if unknown:
    raise ValueError(f'{builder_cls.name}: unknown option(s) {unknown}; known options: '
                     f'{sorted(options)}')
  changed = {k: v for k, v in overrides.items()
             if _normalise(v) != _normalise(options[k])}
  if not changed:
    return base
  for k, v in changed.items():
    if isinstance(options[k], tuple) and isinstance(v, list):
      changed[k] = tuple(v)
  readable = '_'.join(f'{k}-{_name_value(v)}' for k, v in sorted(changed.items()))
  digest = hashlib.sha256(json.dumps(identity.jsonable(changed), sort_keys=True)
                          .encode()).hexdigest()[:8]
  return dataclasses.replace(
      base, name=f'{base.name}_{readable[:MAX_READABLE_NAME]}_{digest}', **changed)


def _normalise(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


def _name_value(v) -> str:
  if isinstance(v, (list, tuple)):
    v = '-'.join(_name_value(x) for x in v)
  text = str(v).lower() if isinstance(v, bool) else str(v)
  return re.sub(r'[^A-Za-z0-9.]+', '', text)


def find_root(manual_dir: Path, marker: str | Sequence[str],
              max_depth: int = 3) -> Optional[Path]:
  """The folder at or under `manual_dir` that contains `marker` (a file or folder; or any
  of several, e.g. a dataset's class folders, of which a download may hold only some).

  Zips of these datasets often nest their root folder once or twice
  (`X/X/...`); searching a few levels down lets users point at whichever folder they
  unpacked. `__MACOSX` folders are skipped. The shallowest match wins.
  """
  markers = (marker,) if isinstance(marker, str) else tuple(marker)
  frontier = [Path(manual_dir)]
  for _ in range(max_depth + 1):
    nxt = []
    for d in sorted(frontier):
      if any((d / m).exists() for m in markers):
        return d
      try:
        nxt.extend(c for c in d.iterdir() if c.is_dir() and c.name not in IGNORED_DIRS)
      except OSError:
        continue
    frontier = nxt
  return None


def read_csv(path: Path, problems: Problems, *, what: str = 'labels CSV',
             delimiter: str = ',', required: Sequence[str] = (),
             expected: str = '') -> list[tuple[str, dict[str, str], list[str]]]:
  """Rows of a CSV as (location text, dict by header, raw fields).

  A missing CSV becomes an (unskippable) problem and an empty list, so that listing can
  go on and report everything else too. The location text ("train.csv line 7: '...'")
  is what error messages print for the row.

  Args:
    path, problems, what, delimiter: the file, where problems go, what the file is (for
      messages), its field separator.
    required: columns every row must have. A header without one of them is one problem
      (and no rows); a row too short to reach one is a problem naming the file, its line
      and the missing field, and is left out. (A field that is present but blank is the
      builder's to judge.)
    expected: the header layout shown when a required column is missing (default: the
      required columns).
  """
  note_input(path)  # missing too: a CSV that appears later changes the dataset
  if not path.exists():
    problems.add('missing file', str(path), f'the {what} of this dataset', skippable=False)
    return []
  text = path.read_text(encoding='utf-8-sig', errors='replace')
  rows = []
  reader = csv.reader(io.StringIO(text), delimiter=delimiter)
  header = None
  lines = text.splitlines()
  for fields in reader:
    line_no = reader.line_num
    if header is None:
      header = [h.strip() for h in fields]
      absent = [c for c in required if c not in header]
      if absent:
        problems.add('bad CSV header', str(path), f'columns {header}; missing '
                     f'{", ".join(absent)}; expected {expected or ",".join(required)}',
                     skippable=False)
        return []
      continue
    if not any(f.strip() for f in fields):
      continue
    raw = lines[line_no - 1] if line_no - 1 < len(lines) else ','.join(fields)
    if len(raw) > 120:
      raw = raw[:117] + '...'
    where = f'{path.name} line {line_no}: {raw!r}'
    row = dict(zip(header, fields))
    absent = [c for c in required if c not in row]
    if absent:
      problems.add('bad row', str(path), f'line {line_no} has {len(fields)} field(s) for '
                   f'the {len(header)} columns of the header; missing field(s): '
                   f'{", ".join(absent)}', where, skippable=False)
      continue
    rows.append((where, row, fields))
  return rows


def rel(path: Path, manual_dir: Path) -> str:
  """`path` relative to the manual_dir, with forward slashes (the stored `id`)."""
  return Path(os.path.relpath(path, manual_dir)).as_posix()


def _decode(items: Sequence[ImageItem], size: int, workers: int
            ) -> Iterator[tuple[ImageItem, Any, Optional[str]]]:
  """Decodes items in order, in worker processes when the set is large enough.

  Spawned (not forked) workers: the parent may hold JAX or TFDS threads, which fork
  would copy in an undefined state. Work is submitted in bounded chunks so that decoded
  images never pile up in memory faster than TFDS writes them.
  """
  n = workers or min(8, os.cpu_count() or 1)
  args = [(item, size) for item in items]
  if n <= 1 or len(items) < MIN_ITEMS_FOR_POOL:
    yield from map(imageio.encode_item_safe, args)
    return
  ctx = multiprocessing.get_context('spawn')
  chunk = n * 32
  with concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx) as pool:
    for start in range(0, len(args), chunk):
      yield from pool.map(imageio.encode_item_safe, args[start:start + chunk], chunksize=4)


class CxrBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the real chest X-ray builders (ArrayRecord, no TensorFlow needed).

  Subclasses set CLASS_NAMES, MANUAL_DOWNLOAD_INSTRUCTIONS, DESCRIPTION, HOMEPAGE and
  implement `_list_items`; they may add `_extra_features` for fields of their own.
  """

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': '`image` stored uncompressed (fast reads); masks stay zlib.'}
  BUILDER_CONFIGS = [CxrConfig(name='default')]
  CLASS_NAMES: tuple[str, ...] = ()
  DESCRIPTION = ''
  HOMEPAGE = ''
  CITATION = ''
  MANUAL_DOWNLOAD_INSTRUCTIONS = ''

  def __init__(self, *, workers: int = 0, **kwargs):
    """Args: workers: decoding processes (0: min(8, CPU count); 1: in-process);
    **kwargs: those of tfds.core.DatasetBuilder (data_dir, config, file_format...)."""
    super().__init__(**kwargs)
    self._workers = workers

  # ---- to implement -------------------------------------------------------------------

  def _extra_features(self) -> dict[str, Any]:
    """Builder-specific features added to `core_features`."""
    return {}

  def _list_items(self, manual_dir: Path, problems: Problems) -> list[ImageItem]:
    """Every example of the dataset, from CSVs and folder names; no pixels decoded."""
    raise NotImplementedError

  # ---- shared -------------------------------------------------------------------------

  def input_files(self, manual_dir: Path, problems: Optional[Problems] = None
                  ) -> tuple[list[ImageItem], list[str]]:
    """The examples in `manual_dir` and every file preparing them reads: the label files
    `_list_items` parsed (through `read_csv` / `read_text`), each item's image and mask
    files. Preparation reads exactly these, and the dataset's identity fingerprints
    exactly these (`identity.record` / `identity.check`), so other files in the folder
    (notes, runs, prepared data) never make prepared data look changed."""
    manual_dir = Path(manual_dir)
    token = _LABEL_FILES.set([])
    try:
      if problems is None:  # (an empty Problems is falsy: no `or` here)
        problems = Problems(self.name, manual_dir)
      items = self._list_items(manual_dir, problems)
      files = list(_LABEL_FILES.get())
    finally:
      _LABEL_FILES.reset(token)
    files += [f for item in items for f in item.files()]
    return items, sorted(set(files))

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    options = ', '.join(f'{k}={v!r}' for k, v in config_options(cfg).items())
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.DESCRIPTION}\n\nClasses (label order): '
        f'{", ".join(self.CLASS_NAMES)}. Options: {options}.',
        features=core_features(cfg.size, **self._extra_features()),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        metadata=tfds.core.MetadataDict(),
    )

  def _empty_error(self, manual_dir: Path) -> DataValidationError:
    return DataValidationError(
        f'{self.name}: no images found in {manual_dir}. Point manual_dir at the folder '
        f'you downloaded; expected layout: '
        f'{" ".join(self.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}')

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.split not in SPLIT_MODES:
      raise ValueError(f'{self.name}: option split must be one of {SPLIT_MODES}, got '
                       f'{cfg.split!r}')
    manual_dir = Path(dl_manager.manual_dir)
    self._manual_dir_path = manual_dir
    problems = Problems(self.name, manual_dir)
    items, input_files = self.input_files(manual_dir, problems)
    if cfg.split == 'patient':
      items = [dataclasses.replace(i, split=patient_split(i.patient_id, cfg))
               if i.split in LABELED_SPLITS else i for i in items]
    if not items and not problems:
      raise self._empty_error(manual_dir)
    validate.check_duplicates(items, problems)
    bad = validate.check_items(items, problems)
    problems.raise_if_any(cfg.skip_bad_files)
    skipped = [str(p) for p in problems.problems]
    items = [i for i in items if i.id not in bad]
    if not items:
      raise DataValidationError(
          f'{self.name}: every one of the {len(bad)} listed examples in {manual_dir} has '
          'a bad file; nothing to write:\n' + '\n'.join(f'  - {s}' for s in skipped[:20]))
    self._check_patient_overlap(items)
    self._skipped = skipped
    names = sorted({i.split for i in items},
                   key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))
    counts = {c: 0 for c in self.CLASS_NAMES}
    examples = {}
    for item in items:
      if 0 <= item.label < len(self.CLASS_NAMES):
        name = self.CLASS_NAMES[item.label]
        counts[name] += 1
        examples.setdefault(name, item.row or item.id)
    for warning in validate.label_warnings(counts, examples):
      log.warning('%s: %s', self.name, warning)
    self.info.metadata.update({
        'class_names': list(self.CLASS_NAMES),
        'class_counts': counts,
        'options': identity.jsonable(config_options(cfg)),
        'identity': identity.record(self, manual_dir, config_options(cfg), input_files),
        'skipped_files': skipped,
        'num_skipped': len(skipped),
    })
    return {s: self._generate_examples([i for i in items if i.split == s]) for s in names}

  def _check_patient_overlap(self, items: Sequence[ImageItem]) -> None:
    """Raises PatientOverlapError if a patient is in two of train/val/test, naming the
    option that re-splits by patient."""
    splits_lib.check_no_patient_overlap(
        {s: [i.patient_id for i in items if i.split == s] for s in LABELED_SPLITS},
        hint=f'{self.name}: pass --option=split=patient (split=patient from Python or in '
        "a data spec's options) to re-split every labeled image by patient hash.")


  def _generate_examples(self, items: Sequence[ImageItem]):
    cfg = self.builder_config
    errors = Problems(self.name, self._manual_dir_for_errors())
    split = items[0].split if items else ''
    # disable=None: a bar on a terminal, silence in logs and tests.
    progress = tqdm.tqdm(_decode(items, cfg.size, self._workers), total=len(items),
                         desc=f'{self.name} {split}', unit='img', disable=None)
    for item, record, error in progress:
      if error is not None:
        errors.add('unreadable image', item.image, error, item.row or item.id)
        continue
      yield item.id, record
    if errors:
      if not cfg.skip_bad_files:
        # Raising here aborts the whole preparation; TFDS then deletes its incomplete.*
        # folder, so nothing of this run can be mistaken for a dataset.
        raise DataValidationError(errors.summary(
            f'{self.name}: {len(errors)} file(s) failed to decode; nothing was written; '
            'pass skip_bad_files=True (--skip_bad_files) to leave them out'),
                                  errors.problems)
      more = [str(p) for p in errors.problems]
      self.info.metadata['skipped_files'] = list(self.info.metadata['skipped_files']) + more
      self.info.metadata['num_skipped'] = len(self.info.metadata['skipped_files'])

  def _manual_dir_for_errors(self) -> str:
    try:
      return os.fspath(self._manual_dir_path)
    except AttributeError:
      return ''


def label_index(value: str, names: Sequence[str], problems: Problems, row: str,
                aliases: Optional[dict[str, str]] = None) -> Optional[int]:
  """Index of a label value in `names` (after `aliases`); records unknown values."""
  key = (aliases or {}).get(value, value)
  if key in names:
    return list(names).index(key)
  problems.add_label(value, row, list(names) + sorted(aliases or {}))
  return None


def patient_split(patient_id: str, cfg: CxrConfig) -> str:
  """The train/val/test split of a patient under the config's fractions and seed."""
  return splits_lib.assign_split(patient_id, cfg.split_fractions, cfg.split_seed)


def nan_targets(n: int) -> np.ndarray:
  """A float32 multi-label target vector of 'not mentioned' (NaN) values."""
  return np.full((n,), np.nan, np.float32)
