"""Checking a dataset on disk before anything is written, and reporting all problems at once.

Preparing a real dataset takes hours; failing on the 80,000th file for a problem that was
visible from the start wastes them, and fixing problems one error at a time wastes more.
So builders first list every example (`ImageItem`), then:

  problems = Problems(dataset_name, manual_dir)
  problems.add_row(...)            # while parsing: unknown label values, bad rows
  check_items(items, problems)     # every listed file: exists? a readable image header?
                                   # PNG chunk CRCs, DICOM pixel size vs file size
  problems.raise_if_any()          # one DataValidationError listing everything

Labels taken from a user's own files (class folder names, CSV label columns) are checked
too: spellings of one class that differ only by case, spaces, hyphens or underscores
(`normal` / `Normal`, `COVID-19` / `covid_19`) are an error listing where each occurs
(`check_label_spellings`), and classes with fewer than MIN_CLASS_IMAGES images or names
that look like variants of each other are reported in a warning (`label_warnings`).

With `skip_bad_files`, the items whose files fail are left out instead, counted, and
listed in the dataset's metadata (`builder.info.metadata['skipped_files']`). Problems
with the dataset's definition (unknown label values, a missing CSV, no images at all)
are never skipped: they mean the wrong folder or builder, not a few bad files.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from typing import Iterable, Mapping, Optional, Sequence

from PIL import Image

from cxr_jax.data import dicom  # pydicom itself is imported only to read a DICOM file
from cxr_jax.data.imageio import DICOM_SUFFIXES, ImageItem

MAX_LISTED = 50  # Problems shown in one error message; the rest are counted.
# A class with fewer labeled images than this is named in a warning: too few to learn or
# to evaluate, and often a typo of another class.
MIN_CLASS_IMAGES = 5


class DataValidationError(ValueError):
  """The files of a dataset do not match what its builder expects."""

  def __init__(self, message: str, problems: Sequence['Problem'] = ()):
    super().__init__(message)
    self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem found in a dataset.

  Attributes:
    kind: 'missing file', 'unreadable image', 'unknown label', 'bad row', ...
    path: the file (relative to the manual_dir when possible) or CSV it concerns.
    detail: what is wrong, e.g. the decoder's message or the offending value.
    row: where it was listed, e.g. "metadata.csv line 12: 'images/a.png,COVID'".
    skippable: whether --skip_bad_files may leave the example out instead.
  """
  kind: str
  path: str
  detail: str = ''
  row: str = ''
  skippable: bool = True

  def __str__(self) -> str:
    text = f'{self.kind}: {self.path}' if self.path else self.kind
    if self.detail:
      text += f' ({self.detail})'
    if self.row:
      text += f' [listed in {self.row}]'
    return text


class Problems:
  """Collects the problems of one preparation, to report them all in one error."""

  def __init__(self, dataset: str, manual_dir: os.PathLike | str):
    self.dataset = dataset
    self.manual_dir = os.fspath(manual_dir)
    self.problems: list[Problem] = []

  def __len__(self) -> int:
    return len(self.problems)

  def relative(self, path: str) -> str:
    """`path` relative to the manual_dir when it lies inside it (shorter messages)."""
    try:
      rel = os.path.relpath(path, self.manual_dir)
    except ValueError:
      return path
    return path if rel.startswith('..') else rel

  def add(self, kind: str, path: str, detail: str = '', row: str = '',
          skippable: bool = True) -> None:
    path = self.relative(path) if path else ''
    self.problems.append(Problem(kind, path, detail, row, skippable))

  def add_label(self, value: str, row: str, known: Iterable[str], path: str = '') -> None:
    """An unknown label value: never skippable (it usually means the wrong builder).
    A known value spelled differently (case, spaces, hyphens, underscores) is named."""
    known = list(known)
    near = [k for k in known if label_key(k) == label_key(value)]
    hint = f'; did you mean {near[0]!r}?' if near else ''
    self.add('unknown label', path, f'value {value!r}; known values: '
             f'{", ".join(repr(k) for k in known)}{hint}', row, skippable=False)

  def summary(self, header: str) -> str:
    shown = self.problems[:MAX_LISTED]
    lines = [f'  - {p}' for p in shown]
    if len(self.problems) > len(shown):
      lines.append(f'  ... and {len(self.problems) - len(shown)} more')
    kinds = {}
    for p in self.problems:
      kinds[p.kind] = kinds.get(p.kind, 0) + 1
    counts = ', '.join(f'{n} {k}' for k, n in kinds.items())
    return f'{header} ({counts}):\n' + '\n'.join(lines)

  def raise_if_any(self, skip_bad_files: bool = False) -> None:
    """Raises one DataValidationError naming every problem (or the unskippable ones)."""
    fatal = [p for p in self.problems if not (skip_bad_files and p.skippable)]
    if not fatal:
      return
    if skip_bad_files:
      self.problems = fatal
    hint = ('' if all(not p.skippable for p in fatal) else
            '; pass skip_bad_files=True (--skip_bad_files) to leave bad files out')
    raise DataValidationError(
        self.summary(f'{self.dataset}: {len(fatal)} problem(s) in {self.manual_dir}; '
                     f'nothing was written{hint}'), fatal)


def check_file(path: str) -> Optional[str]:
  """A quick check that `path` is a readable image, without decoding its pixels.

  Returns:
    None when the file looks fine, else the reason: missing, empty, not an image, a PNG
    whose chunks fail their CRC (truncated or corrupted), a DICOM without pixel data or
    shorter than its uncompressed pixel data.
  """
  if not os.path.exists(path):
    return 'missing file'
  size = os.path.getsize(path)
  if size == 0:
    return 'empty file (0 bytes)'
  if path.lower().endswith(DICOM_SUFFIXES):
    return _check_dicom(path, size)
  try:
    with Image.open(path) as img:
      # verify() walks the PNG chunks and checks their CRCs, so truncation and
      # corruption are caught without inflating the pixels.
      img.verify()
  except Exception as e:  # PIL raises many types on bad data.
    return f'{type(e).__name__}: {e}'
  return None


def _check_dicom(path: str, size: int) -> Optional[str]:
  try:
    ds = dicom.read_header(path, stop_before_pixels=True)
  except Exception as e:
    return f'unreadable DICOM ({e})'
  if 'Rows' not in ds or 'Columns' not in ds:
    return 'unreadable DICOM (no image attributes Rows/Columns: not an image)'
  syntax = ds.file_meta.TransferSyntaxUID
  if not getattr(syntax, 'is_compressed', False):
    frames = int(ds.get('NumberOfFrames', 1) or 1)
    needed = (int(ds.Rows) * int(ds.Columns) * frames * int(ds.get('SamplesPerPixel', 1))
              * int(ds.get('BitsAllocated', 8)) // 8)
    if size < needed:
      return (f'truncated DICOM: the file has {size} bytes but its uncompressed pixel data '
              f'alone needs {needed}')
  return None


def check_items(items: Sequence[ImageItem], problems: Problems,
                workers: int = 8) -> set[str]:
  """Checks every file of every item; adds a problem per bad file.

  Args:
    items: the listed examples.
    problems: where problems are recorded (with each item's row).
    workers: threads; the checks are I/O bound, so threads overlap the waits.

  Returns:
    ids of the items with at least one bad file.
  """
  jobs = [(item, path) for item in items for path in item.files()]
  bad = set()
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    for (item, path), reason in zip(jobs, pool.map(lambda j: check_file(j[1]), jobs)):
      if reason is not None:
        kind = 'missing file' if reason == 'missing file' else 'unreadable image'
        detail = '' if reason == 'missing file' else reason
        problems.add(kind, path, detail, item.row or item.id)
        bad.add(item.id)
  return bad


def check_duplicates(items: Sequence[ImageItem], problems: Problems) -> None:
  """Two items with one id (a file listed twice) would be written twice: an error."""
  seen = {}
  for item in items:
    if item.id in seen:
      problems.add('duplicate entry', item.image,
                   f'also listed in {seen[item.id] or item.id}', item.row, skippable=False)
    else:
      seen[item.id] = item.row


def label_key(name: str) -> str:
  """A label with case, spaces, hyphens and underscores removed: spellings of one class
  ('COVID-19', 'covid_19', 'Covid 19') share a key."""
  return re.sub(r'[\s_\-]+', '', str(name)).casefold()


def check_label_spellings(labels: Iterable[tuple[str, str]], problems: Problems,
                          path: str = '') -> None:
  """Adds one (unskippable) problem per class written in several spellings.

  Args:
    labels: (label value, where it was read) for every labeled example, e.g.
      ('Normal', "labels.csv line 7: 'b.png,Normal'") or a class folder.
    problems: where the problem is recorded, naming each spelling, its number of
      images and where it first occurs.
    path: the file the labels come from (the CSV), if one.
  """
  spellings: dict[str, dict[str, list]] = {}
  for value, where in labels:
    entry = spellings.setdefault(label_key(value), {}).setdefault(value, [0, where])
    entry[0] += 1
  for variants in spellings.values():
    if len(variants) < 2:
      continue
    listed = '; '.join(f'{v!r}: {n} image(s), e.g. {where}'
                       for v, (n, where) in sorted(variants.items()))
    problems.add('inconsistent label spelling', path,
                 f'{len(variants)} spellings of one class would become {len(variants)} '
                 f'classes ({listed}); use one spelling (or list the classes with option '
                 'class_names)', skippable=False)


def label_warnings(counts: Mapping[str, int], examples: Mapping[str, str]) -> list[str]:
  """Warnings about the classes of a dataset: rare classes and look-alike names.

  Args:
    counts: class name -> number of labeled images.
    examples: class name -> where one of its images was listed.

  Returns:
    one line per warning (empty when all is well): classes with fewer than
    MIN_CLASS_IMAGES images, and pairs of names one of which extends the other
    ('covid' / 'covid-19') once case, spaces, hyphens and underscores are ignored.
  """
  out = []
  rare = [c for c in counts if counts[c] < MIN_CLASS_IMAGES]
  if rare:
    out.append(f'{len(rare)} class(es) with fewer than {MIN_CLASS_IMAGES} labeled images '
               '(too few to learn or evaluate; a typo of another class?): ' +
               '; '.join(f'{c!r}: {counts[c]}' + (f' (e.g. {examples[c]})'
                                                  if c in examples else '') for c in rare))
  names = sorted(counts, key=label_key)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      ka, kb = label_key(a), label_key(b)
      if len(ka) >= 3 and kb.startswith(ka) and ka != kb:
        out.append(f'class names {a!r} and {b!r} look like variants of one class; if they '
                   'are, give them one spelling')
  return out
