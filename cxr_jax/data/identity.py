"""What a prepared dataset was built from, and the check that it is what the caller asks for.

A prepared dataset lives in `data_dir/<name>/<config>/<version>`. The config folder name
already encodes the options (`_common.config_with` appends a hash of their exact values),
so different options never share a folder. What the name cannot say is which raw files
the data came from. `record` therefore stores, in the dataset's metadata
(`metadata.json`, key `identity`):

  source        the resolved manual_dir the dataset was prepared from;
  files         'builder inputs': the fingerprint covers the files the builder reads
                (`CxrBuilder.input_files`: the images, masks and label files of the
                dataset), not everything under manual_dir;
  fingerprint   a hash of that file list: every file's path relative to manual_dir, size
                and mtime (a stat per file, no contents read; a listed file that is
                missing counts as such), and `num_files`, `total_bytes`;
  builder, version, config, options   the builder and its exact option values;

and the file list itself in `source_files.tsv.gz` next to it, so that a mismatch can name
the files that differ. `check` runs whenever a prepared dataset is opened with a
manual_dir (`prepare.ensure_prepared`, used by the CLI, `prepare.prepare` and the training
pipeline): it lists the builder's input files in manual_dir again; the same files (same
fingerprint, wherever the folder now lies) open the data; another folder, or the same
folder with an image, mask or label file added, removed or modified, is refused with
`DataIdentityError` (one line), naming both sources and the differing files. Other files
inside the raw folder (notes, runs, prepared data in a data_dir there) are not read by the
builder and never cause a refusal. Nothing is rebuilt silently: use a new data_dir, or
delete the prepared folder to rebuild it in place.

Opening without a manual_dir (reading prepared data on a machine without the raw files)
checks only the options. Datasets prepared before these records existed open with a
warning when a manual_dir is given (their source cannot be checked); those whose record
fingerprinted every file under manual_dir (no `files` entry) open when every input file
the builder reads now is in that record, unchanged. The phantom has no raw folder: its
config name spells out all of its options, which is its whole identity.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from typing import Any, Mapping, Optional

SOURCE_LIST = 'source_files.tsv.gz'
log = logging.getLogger('cxr_jax')


class DataIdentityError(ValueError):
  """A prepared dataset was built from other files or options than the ones asked for."""


# the record's `files`: which files its fingerprint covers
BUILDER_INPUTS = 'builder inputs'
MISSING = (-1, -1)  # (size, mtime) of a listed file that is not there


def stat_files(root: str, paths) -> dict[str, tuple[int, int]]:
  """Path relative to `root` -> (size, mtime_ns) of each file of `paths` (symbolic links
  followed; MISSING for a file that is not there)."""
  root_abs, root_real = os.path.abspath(root), os.path.realpath(root)
  out = {}
  for path in paths:
    rel = os.path.relpath(os.path.abspath(path), root_abs)
    if rel.startswith('..'):  # a path the builder resolved through a link
      rel = os.path.relpath(os.path.realpath(path), root_real)
    try:
      st = os.stat(path)
      out[rel.replace(os.sep, '/')] = (st.st_size, st.st_mtime_ns)
    except OSError:
      out[rel.replace(os.sep, '/')] = MISSING
  return out


def list_source(root: str, exclude: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
  """Relative path -> (size, mtime_ns) of every file under `root`: the file list of the
  records written before `BUILDER_INPUTS` (read to check data prepared then).

  Hidden files and folders (names starting with '.') and `__MACOSX` are left out, as are
  the folders in `exclude` (a data_dir inside the raw folder). Symbolic links are
  followed (each real folder once).
  """
  root = os.path.realpath(root)
  skip = {os.path.realpath(e) for e in exclude}
  out, seen, stack = {}, set(), [root]
  while stack:
    folder = stack.pop()
    real = os.path.realpath(folder)
    if real in seen or real in skip:
      continue
    seen.add(real)
    try:
      entries = list(os.scandir(folder))
    except OSError:
      continue
    for entry in entries:
      if entry.name.startswith('.') or entry.name == '__MACOSX':
        continue
      try:
        if entry.is_dir(follow_symlinks=True):
          stack.append(entry.path)
        elif entry.is_file(follow_symlinks=True):
          st = entry.stat(follow_symlinks=True)
          rel = os.path.relpath(entry.path, root).replace(os.sep, '/')
          out[rel] = (st.st_size, st.st_mtime_ns)
      except OSError:
        continue
  return out


def fingerprint(files: Mapping[str, tuple[int, int]]) -> str:
  """A hash of a file list (paths, sizes, mtimes), independent of the folder's location."""
  digest = hashlib.sha256()
  for rel in sorted(files):
    size, mtime = files[rel]
    digest.update(f'{rel}\t{size}\t{mtime}\n'.encode('utf-8', 'surrogateescape'))
  return digest.hexdigest()


def jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
  """Options as JSON stores them (tuples become lists), for recording and comparing."""
  return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                for k, v in options.items()}, sort_keys=True))


def record(builder, manual_dir: str, options: Mapping[str, Any],
           input_files) -> dict[str, Any]:
  """The identity of a dataset being prepared from `manual_dir` with `options`, whose
  builder reads `input_files` (`CxrBuilder.input_files`).

  Writes the file list into the (incomplete) dataset folder `builder.data_dir` and
  returns the summary for `info.metadata['identity']`.
  """
  source = os.path.realpath(manual_dir)
  files = stat_files(manual_dir, input_files)
  with gzip.open(os.path.join(os.fspath(builder.data_dir), SOURCE_LIST), 'wt',
                 encoding='utf-8', errors='surrogateescape') as f:
    for rel in sorted(files):
      f.write(f'{rel}\t{files[rel][0]}\t{files[rel][1]}\n')
  return {
      **_source_summary(source, files),
      'files': BUILDER_INPUTS,
      'builder': builder.name,
      'version': str(builder.version),
      'config': builder.builder_config.name,
      'options': jsonable(options),
  }


def recorded(builder) -> Optional[dict[str, Any]]:
  """The identity stored with a prepared dataset, None if it has none (older, phantom)."""
  path = os.path.join(os.fspath(builder.data_dir), 'metadata.json')
  try:
    with open(path) as f:
      return json.load(f).get('identity')
  except (OSError, ValueError):
    return None


def _recorded_files(builder) -> Optional[dict[str, tuple[int, int]]]:
  path = os.path.join(os.fspath(builder.data_dir), SOURCE_LIST)
  try:
    with gzip.open(path, 'rt', encoding='utf-8', errors='surrogateescape') as f:
      rows = (line.rstrip('\n').rsplit('\t', 2) for line in f)
      return {rel: (int(size), int(mtime)) for rel, size, mtime in rows}
  except (OSError, ValueError):
    return None


def _differences(old: Optional[Mapping], new: Mapping) -> str:
  if old is None:
    return ''
  old = {k: v for k, v in old.items() if v != MISSING}  # a listed file not there: absent
  new = {k: v for k, v in new.items() if v != MISSING}
  parts = []
  for what, names in (
      ('only in the prepared source', sorted(set(old) - set(new))),
      ('only in yours', sorted(set(new) - set(old))),
      ('with another size or modification time', sorted(
          k for k in set(old) & set(new) if old[k] != new[k]))):
    if names:
      shown = ', '.join(names[:5]) + (', ...' if len(names) > 5 else '')
      parts.append(f'{len(names)} file(s) {what} ({shown})')
  return '; '.join(parts)


def _source_summary(source: str, files: Mapping[str, tuple[int, int]]) -> dict[str, Any]:
  return {'source': source, 'fingerprint': fingerprint(files), 'num_files': len(files),
          'total_bytes': sum(max(size, 0) for size, _ in files.values())}


def _summary_text(summary: Mapping[str, Any]) -> str:
  nbytes = summary['total_bytes']
  size = f'{nbytes / 1e6:.1f} MB' if nbytes >= 1e6 else f'{nbytes} bytes'
  return (f'{summary["source"]} ({summary["num_files"]} files, {size}, fingerprint '
          f'{summary["fingerprint"][:12]})')


def check(builder, manual_dir: Optional[str], options: Optional[Mapping[str, Any]],
          key: str = 'manual_dir') -> None:
  """Raises DataIdentityError unless the prepared `builder` is what was asked for.

  Args:
    builder: a builder whose dataset is prepared.
    manual_dir: the raw folder the caller names, or None (read as prepared).
    options: the caller's exact options (None: builders without recorded options).
    key: what names manual_dir in the error (a config key, or the CLI's flag).
  """
  ident = recorded(builder)
  where = os.fspath(builder.data_dir)
  if ident is None:
    if manual_dir and options is not None:
      log.warning('%s: %s was prepared before cxr_jax recorded what a dataset is built '
                  'from; it cannot be checked against %s. Delete it to rebuild it with a '
                  'record.', builder.name, where, manual_dir)
    return
  if options is not None and ident.get('options') != jsonable(options):
    raise DataIdentityError(
        f'{builder.name}: {where} holds data prepared with options {ident.get("options")}, '
        f'not the requested {jsonable(options)}. Delete the folder to rebuild it, or use '
        'a new data_dir.')
  if not manual_dir:
    return
  source = os.path.realpath(os.path.expanduser(os.fspath(manual_dir)))
  if not os.path.isdir(source):
    log.warning('%s: %s=%s is not a folder here; reading %s as prepared from %s',
                builder.name, key, source, where, ident['source'])
    return
  _, inputs = builder.input_files(source)
  files = stat_files(source, inputs)
  mine = _source_summary(source, files)
  if mine['fingerprint'] == ident['fingerprint']:
    if source != ident['source']:
      log.info('%s: %s holds the same files as %s, from which %s was prepared',
               builder.name, source, ident['source'], where)
    return
  old = _recorded_files(builder)
  if ident.get('files') != BUILDER_INPUTS and old is not None:
    # recorded before BUILDER_INPUTS: every file under manual_dir then. The data is the
    # same when every file the builder reads now is there, unchanged
    if all(old.get(rel) == stat for rel, stat in files.items() if stat != MISSING):
      return
    old = {rel: old[rel] for rel in old if rel in files}
  same = 'the same folder, changed since' if source == ident['source'] else 'another folder'
  diff = _differences(old, files)
  raise DataIdentityError(
      f'{builder.name}: {where} was prepared from {_summary_text(ident)}, but {key} is '
      f'{same}: {_summary_text(mine)}' + (f'; differences: {diff}' if diff else '') +
      '. Prepared data is never reused for other files: to prepare from this folder, use '
      f'a new data_dir, or delete {where} (it is rebuilt there); to read the prepared '
      f'data as it is, leave {key} out.')
