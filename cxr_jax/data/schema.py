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

Builders may add fields of their own (boxes, view position, multi-label targets...).
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
