"""Prepare a dataset once: from the folder a user downloaded to validated ArrayRecord files.

Command line (`cxr_jax/cli/prepare.py`; a progress bar per split on a terminal):

  python -m cxr_jax.cli.prepare --dataset=covid_qu_ex --config=infection \\
      --manual_dir=~/data/COVID-QU-Ex --data_dir=~/tensorflow_datasets [--size=256] \\
      [--skip_bad_files] [--workers=8] [--option=split_seed=1 ...]

Library (what training configs that name a real dataset call on first use; a dataset
already prepared with the same options is opened, not rebuilt):

  builder = prepare('kermany_pneumonia', data_dir, manual_dir='~/data/chest_xray', size=256)
  source = builder.as_data_source()['train']

The options (size, skip_bad_files, split fractions, dataset-specific ones such as
CheXpert's `uncertainty`) name the config folder the data is written to (readable form
and a hash of the exact values), so different options never overwrite each other. A
prepared dataset records the folder and file list it was built from
(`cxr_jax/data/identity.py`): opening it with another manual_dir, or after the files
changed, raises `DataIdentityError` instead of returning the old data.
"""
from __future__ import annotations

import os
import sys
import types
from typing import Any, Optional

import tensorflow_datasets as tfds

from cxr_jax.data import identity


def builder_class(name: str):
  """The registered TFDS builder class called `name` (importing our builders first)."""
  import cxr_jax.data.builders  # noqa: F401  pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import registered  # pylint: disable=import-outside-toplevel
  try:
    return registered.imported_builder_cls(name)
  except Exception as e:  # DatasetNotFoundError and friends.
    raise ValueError(f'unknown dataset {name!r}; cxr_jax datasets: '
                     f'{", ".join(dataset_names())}') from e


def dataset_names() -> list[str]:
  """Names of the datasets cxr_jax registers (not the whole TFDS catalog)."""
  import cxr_jax.data.builders as package  # pylint: disable=import-outside-toplevel
  names = set()
  for attr, module in vars(package).items():
    if attr.startswith('_') or not isinstance(module, types.ModuleType):
      continue  # _common holds the unregistered base class.
    for obj in vars(module).values():
      if (isinstance(obj, type) and issubclass(obj, tfds.core.DatasetBuilder)
          and obj.__module__ == module.__name__):
        names.add(obj.name)
  return sorted(names)


def make_builder(name: str, data_dir: str, config: Optional[str] = None, workers: int = 0,
                 **overrides: Any):
  """A builder of dataset `name` with options `overrides`, reading/writing `data_dir`.

  Args:
    name: registered name, e.g. 'covid_qu_ex'.
    data_dir: TFDS data directory (prepared data goes to data_dir/name/config/version).
    config: name of the builder config to start from (default: the builder's first).
    workers: decoding processes for preparation (0: automatic; 1: in-process).
    **overrides: builder config options, e.g. size=512, skip_bad_files=True.
  """
  from cxr_jax.data.builders import _common  # pylint: disable=import-outside-toplevel
  cls = builder_class(name)
  module = sys.modules[cls.__module__]
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if issubclass(cls, _common.CxrBuilder):
    cfg = _common.config_with(cls, config, **overrides)
    return cls(data_dir=data_dir, config=cfg, file_format='array_record', workers=workers)
  if hasattr(module, 'make_config'):  # The phantom names its configs by their values.
    if config and not overrides:
      return cls(data_dir=data_dir, config=config, file_format='array_record')
    cfg = module.make_config(**overrides)
    return cls(data_dir=data_dir, config=cfg, file_format='array_record')
  if overrides:
    raise ValueError(f'dataset {name!r} takes no options, got {sorted(overrides)}')
  return cls(data_dir=data_dir, config=config, file_format='array_record')


def prepare(name: str, data_dir: str, manual_dir: Optional[str] = None,
            config: Optional[str] = None, workers: int = 0, **overrides: Any):
  """Prepares dataset `name` if needed and returns its builder (ready for as_data_source).

  Raises:
    ValueError: unknown dataset or option; the dataset is not prepared and no
      manual_dir was given (the message says where to get it).
    cxr_jax.data.validate.DataValidationError: bad or missing files, unknown labels.
    cxr_jax.data.splits.PatientOverlapError: a patient in two splits.
    cxr_jax.data.identity.DataIdentityError: the dataset in data_dir was prepared from
      other files than manual_dir's (or with other options).
  """
  builder = make_builder(name, data_dir, config=config, workers=workers, **overrides)
  return ensure_prepared(builder, manual_dir)


def ensure_prepared(builder, manual_dir: Optional[str] = None, key: str = 'manual_dir'):
  """Opens `builder`'s prepared dataset if it is what was asked for, else prepares it.

  A prepared dataset is returned only when its recorded identity matches: the same
  options, and (when manual_dir is given) the same source files. Otherwise
  DataIdentityError says what differs and how to proceed; nothing is reused silently.
  `key` names manual_dir in the one-line errors (a config key, or the CLI's flag).
  """
  from cxr_jax.data.builders import _common  # pylint: disable=import-outside-toplevel
  name = builder.name
  manual_dir = os.path.expanduser(os.fspath(manual_dir)) if manual_dir else None
  if _is_prepared(builder):
    options = (_common.config_options(builder.builder_config)
               if isinstance(builder, _common.CxrBuilder) else None)
    identity.check(builder, manual_dir, options, key)
    return builder
  needs_manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', ''))
  if needs_manual and not manual_dir:
    raise ValueError(
        f'{key} is empty and dataset {name!r} (config {builder.builder_config.name!r}) is '
        f'not prepared in {builder.data_dir_root}: give {key}=<the folder you downloaded> '
        f'({layout(builder)})')
  if needs_manual:
    if not os.path.isdir(manual_dir):
      raise ValueError(f'{key}={manual_dir}: no such folder (the raw files of dataset '
                       f'{name!r}, not prepared in {builder.data_dir_root})')
    if not os.listdir(manual_dir):
      raise ValueError(f'{key}={manual_dir}: the folder is empty; dataset {name!r} expects '
                       f'{layout(builder)}')
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder


def layout(builder) -> str:
  """The builder's download instructions in one line (for one-line errors)."""
  return ' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())


def _is_prepared(builder) -> bool:
  """Whether the complete dataset is on disk (TFDS renames its folder only at the end)."""
  return os.path.exists(os.path.join(os.fspath(builder.data_dir), 'dataset_info.json'))
