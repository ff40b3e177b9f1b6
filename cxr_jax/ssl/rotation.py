"""Rotation prediction, RotNet (Gidaris, Singh, Komodakis; ICLR 2018).

Each image is lightly augmented (a random resized crop etc. at the stage's strength, to the
stage's view size) and then rotated by 0, 90, 180 and 270 degrees; the encoder sees all 4B
copies in one pass and a classifier on its pooled features predicts which rotation each
copy got (4-way cross-entropy). RotNet feeds all four rotations of an image in the same
batch, as here; predicting the rotation needs the orientation of the anatomy (apex of the
heart, diaphragm below the lungs), which is what the encoder must learn to see.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.data import augment
from cxr_jax.ssl import common, pretext

NUM_ROTATIONS = 4  # 0, 90, 180, 270 degrees (counter-clockwise)
VIEWS_PER_IMAGE = NUM_ROTATIONS  # network inputs per image (compute accounting)

DEFAULTS = ml_collections.ConfigDict(dict(
    head_hidden_dim=256,   # the classifier's hidden width
    head_layers=2,         # Dense layers of the classifier (RotNet: conv blocks + linear)
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def build_model(encoder, cfg):
  return pretext.classifier_model(encoder, cfg, NUM_ROTATIONS)


init_extra = common.no_extra
update_extra = common.keep_extra


def rotations(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The four rotations of each image and their labels.

  Args:
    images: [B, S, S, C] (square).
  Returns:
    (rotated [4B, S, S, C], labels [4B] int32): rotated[k * B + b] is image b rotated
    by k * 90 degrees counter-clockwise (`jnp.rot90` on the spatial axes), label k.
  """
  batch = images.shape[0]
  rotated = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(NUM_ROTATIONS)])
  labels = jnp.repeat(jnp.arange(NUM_ROTATIONS, dtype=jnp.int32), batch)
  return rotated, labels


def make_inputs(rng, images, hp, image_size: int, cfg):
  """{'images': [4B, S, S, C] rotated copies, 'labels': [4B] their rotation index}."""
  del cfg
  base = augment.augment(rng, images, hp['strength'], image_size)
  rotated, labels = rotations(base)
  return {'images': rotated, 'labels': labels}


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  """Mean 4-way cross-entropy over the 4B copies; aux['features'] of the unrotated copies."""
  del extra, hp, cfg
  loss, (batch_stats, metrics, aux) = pretext.classification_loss(
      model, params, batch_stats, inputs['images'], inputs['labels'], num_inputs=1)
  batch = inputs['images'].shape[0] // NUM_ROTATIONS
  return loss, (batch_stats, metrics, {'features': aux['features'][:batch]})
