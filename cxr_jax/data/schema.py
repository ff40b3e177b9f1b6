"""The record layout shared by every dataset builder.

All builders (the synthetic phantom and the real chest X-ray sets) store the same core
fields, so that the pipeline, the training loop and the attention analysis can read any
of them by config alone:

  image       [S, S, 1] uint8   gray radiograph at the builder's storage size S, stored
                                uncompressed (S*S bytes) so that reading is cheap
                                (aspect kept: area-resized so the long side is S, then
                                zero-padded to a square and centred)
  mask        [S, S, 1] uint8   lung mask, 1 inside the lungs (all zeros when absent;
                                zlib-compressed: binary masks shrink ~50x)
  has_mask    bool              whether `mask` is real
  label       int64             class index, -1 for unlabeled examples
  patient_id  text              the patient (or study) the image belongs to; splits and
                                bootstrap resampling are done per patient
  id          text              the source file path relative to the manual_dir (or a
                                synthetic id), so every error can name its file

Builders may add fields of their own (boxes, view position...). Multi-label findings:

  targets     [F] float32           1 present, 0 absent, NaN not observed (masked out of
                                    losses and metrics), in the order of the builder's
                                    `FINDING_NAMES` (`finding_names(builder)`)

Builders also declare, for configs/paper.py (`ssl_split`, `extra_masks` below):
  SSL_SPLIT    the split a self-supervised stage reads ('unlabeled' when the builder has
               one, else 'train'; default 'train')
  EXTRA_MASKS  comma-separated mask fields beyond the lungs ('<name>' or '<name>_mask'
               features) that the attention analysis can score (default '')

Only `tfds.features.Tensor`, `Scalar` and `Text` are used so that TFDS can write
ArrayRecord files without TensorFlow installed.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

UNLABELED = -1


def core_features(size: int, **extra) -> tfds.features.FeaturesDict:
  """The shared feature dict at storage size `size`, plus builder-specific `extra` ones."""
  features = {
      # stored raw: reading it is a copy, not a decompression (the hot path of every epoch)
      'image': tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8, encoding='bytes'),
      'mask': tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8, encoding='zlib'),
      'has_mask': tfds.features.Scalar(dtype=np.bool_),
      'label': tfds.features.Scalar(dtype=np.int64),
      'patient_id': tfds.features.Text(),
      'id': tfds.features.Text(),
  }
  features.update(extra)
  return tfds.features.FeaturesDict(features)


def class_names(builder) -> tuple[str, ...]:
  """The class names of a builder, in label order (builders define `CLASS_NAMES`)."""
  names = getattr(builder, 'CLASS_NAMES', None)
  if names is None:
    raise ValueError(f'dataset builder {builder.name!r} defines no CLASS_NAMES')
  return tuple(names)


def finding_names(builder) -> tuple[str, ...]:
  """The names of a builder's multi-label findings, in `targets` order; () when its
  records have no `targets` (builders define `FINDING_NAMES`, a tuple or a property of
  the builder config)."""
  names = tuple(getattr(builder, 'FINDING_NAMES', None) or ())
  if names and 'targets' in builder.info.features:
    shape = builder.info.features['targets'].shape
    if tuple(shape) != (len(names),):
      raise ValueError(f'dataset builder {builder.name!r}: targets have shape {shape} but '
                       f'FINDING_NAMES lists {len(names)} findings')
  return names


def select_findings(builder, spec: str, key: str = 'config.finetune.data.findings'
                    ) -> tuple[tuple[str, ...], list[int]]:
  """(names, indices into `targets`) of the findings `spec` selects: 'all', or names
  separated by commas (CLI) or '+' (configs/paper.py arguments).

  Raises:
    ValueError: naming `key`, when the builder has no findings or a name is not one of
      them (the message lists them).
  """
  available = finding_names(builder)
  if not available:
    raise ValueError(f'{key}={spec!r}: dataset {builder.name!r} has no multi-label '
                     "findings (no `targets`); use '' for its single label")
  if spec.strip() == 'all':
    return available, list(range(len(available)))
  names = [n.strip() for n in spec.replace('+', ',').split(',') if n.strip()]
  unknown = [n for n in names if n not in available]
  if unknown or not names:
    raise ValueError(f'{key}: {unknown or spec!r} not among the findings of dataset '
                     f"{builder.name!r}: {list(available)} (or 'all')")
  if len(set(names)) != len(names):
    raise ValueError(f'{key}={spec!r} names a finding twice')
  return tuple(names), [available.index(n) for n in names]


def ssl_split(builder) -> str:
  """The split a self-supervised stage reads from this builder (its `SSL_SPLIT`)."""
  return getattr(builder, 'SSL_SPLIT', 'train')


def extra_masks(builder) -> str:
  """Comma-separated extra mask fields of this builder's records (its `EXTRA_MASKS`)."""
  return getattr(builder, 'EXTRA_MASKS', '')
