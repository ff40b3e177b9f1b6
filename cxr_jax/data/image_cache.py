"""The image cache: a split's images written once, next to the prepared dataset, as raw
uint8 records of an uncompressed ArrayRecord file, read back without decompression or a
tf.Example parse (`for_split`; config.image_cache, on by default).
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

import grain
import numpy as np
import tqdm


class RawImages:
  """The images of one split as raw records of an uncompressed ArrayRecord file (written
  by `for_split`): a read is a copy, with no decompression and no tf.Example parse."""

  def __init__(self, path, shape, dtype, columns: dict[str, np.ndarray] | None = None):
    self.path, self._shape, self._dtype = str(path), tuple(shape), np.dtype(dtype)
    self._records = grain.sources.ArrayRecordDataSource([self.path])
    self._columns = dict(columns or {})
    for name, column in self._columns.items():
      if len(column) != len(self._records):
        raise ValueError(f'column {name!r} has {len(column)} values for the '
                         f'{len(self._records)} images of {self.path}')

  def with_columns(self, **columns: np.ndarray) -> 'RawImages':
    """The same images, each record also carrying its row of `columns` (small per-example
    fields read once into memory, e.g. labels for fine-tuning)."""
    return RawImages(self.path, self._shape, self._dtype, {**self._columns, **columns})

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    record = {'image': np.frombuffer(self._records[i], self._dtype).reshape(self._shape)}
    for name, column in self._columns.items():
      record[name] = column[i]
    return record

  def decoding(self, fields: Sequence[str]):
    unknown = sorted(set(fields) - {'image'} - set(self._columns))
    if unknown:
      raise ValueError(f'{self.path} holds images and {sorted(self._columns)}, not {unknown}')
    return self


# TFDS writes ArrayRecord files with 'group_size:1' and ArrayRecord's default per-record
# compression (hard-coded); the cache is the same layout without the compression.
OPTIONS = 'group_size:1,uncompressed'


def for_split(source) -> RawImages | None:
  """The images of a split, written once next to the prepared dataset as raw uint8
  records in an uncompressed ArrayRecord file, for the epochs of pretraining and
  fine-tuning (`source`: a `pipeline.SplitSource`).

  TFDS's records are compressed one by one and read through a tf.Example parse: ~2,200
  images/s per core, against ~22,000 raw reads/s from the uncompressed file
  (docs/benchmarks.md). Returns None (read the TFDS records), with a warning, when the
  cache cannot be written there (a read-only dataset directory, a full disk): whatever
  fails while creating, writing, closing or renaming the file, the partial file is
  removed and training goes on from the records.
  """
  builder, split = source.builder, source.split
  path = os.path.join(builder.data_dir, f'{builder.name}-{split}.image-cache.array_record')
  images = source.decoding(('image',))
  first = np.asarray(images[0]['image'])
  if not os.path.exists(path) and not _write_cache(path, images, first.dtype,
                                                   f'{builder.name}/{split}'):
    return None
  cache = RawImages(path, first.shape, first.dtype)
  if len(cache) != len(source):
    raise ValueError(f'{path} holds {len(cache)} images for the {len(source)} examples of '
                     f'split {split!r}; delete it and it is rebuilt')
  return cache


# What a failed cache write raises: the file system's OSError (PermissionError on a
# read-only data_dir, no space left) or ArrayRecord's status errors.
_WRITE_ERRORS = (OSError, RuntimeError, ValueError)


def _write_cache(path: str, images, dtype, what: str) -> bool:
  """Writes the image cache `path` atomically; False (and a warning) if it cannot.

  Only the writing is guarded: an error reading the TFDS records propagates.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # only where an image cache is written
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    writer = ArrayRecordWriter(tmp, OPTIONS)
  except _WRITE_ERRORS as e:
    return _cache_failed(path, tmp, None, e)
  try:
    for i in tqdm.tqdm(range(len(images)), desc=f'image cache {what}', unit='img',
                       leave=False, mininterval=1.0):
      image = np.ascontiguousarray(images[i]['image'], dtype).tobytes()
      try:
        writer.write(image)
      except _WRITE_ERRORS as e:
        return _cache_failed(path, tmp, writer, e)
  except BaseException:
    _discard(tmp, writer)
    raise
  try:
    writer.close()
    os.replace(tmp, path)  # atomic: processes racing here write the same bytes
  except _WRITE_ERRORS as e:
    return _cache_failed(path, tmp, None, e)
  return True


def _discard(tmp: str, writer) -> None:
  """Closes `writer` (if any) and removes the partial file, ignoring further errors."""
  if writer is not None:
    try:
      writer.close()
    except Exception:  # pylint: disable=broad-except
      pass
  try:
    os.remove(tmp)
  except OSError:
    pass


def _cache_failed(path: str, tmp: str, writer, error: Exception) -> bool:
  _discard(tmp, writer)
  logging.getLogger('cxr_jax').warning(
      'image cache: cannot write %s (%s: %s); reading the TFDS records instead (slower). '
      'Make the dataset folder writable, or set config.image_cache=False to silence this.',
      path, type(error).__name__, error)
  return False
