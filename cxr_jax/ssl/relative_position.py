"""Relative patch position, context prediction (Doersch, Gupta, Efros; ICCV 2015).

The view (the stage's view size S, lightly augmented at the stage's strength) is divided
into a 3 x 3 grid of cells of S // 3 px. A patch of floor(patch_fraction * cell) px is cut
from the centre cell and one from a random one of its 8 neighbours, each at a random
offset inside its cell (the gap between cells and the jitter keep the network from
matching edges across patch borders, as in the paper: 96 px patches, gaps of 48 px,
jitter up to 7 px). Both patches go through the shared encoder, their pooled features are
concatenated (centre first) and an MLP predicts which of the 8 neighbours the second
patch came from (8-way cross-entropy). The paper's chromatic-aberration counter-measure
does not apply to grey radiographs; each patch is normalised on its own instead (as the
jigsaw's tiles), so brightness differences between regions do not give the answer away.
Patches must be at least `pretext.MIN_TILE` (8) px (S >= 32 at patch_fraction 0.75).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax.data import augment
from cxr_jax.ssl import common, pretext

CENTRE = 4
VIEWS_PER_IMAGE = 2  # the centre patch and one neighbour (compute accounting)
# label k: the neighbour in cell NEIGHBOURS[k] of the 3 x 3 grid (row-major), 0 = top left
NEIGHBOURS = np.asarray([0, 1, 2, 3, 5, 6, 7, 8], np.int32)

DEFAULTS = ml_collections.ConfigDict(dict(
    patch_fraction=0.75,     # patch side / cell side (paper: 96 / (96 + 48) with jitter)
    normalise_patches=True,  # zero mean, unit variance per patch
    head_hidden_dim=512,     # hidden width of the position classifier (paper: 4096)
    head_layers=2,           # Dense layers of the classifier after the concatenation
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def check(cfg, image_size: int, key: str):
  pretext.grid_geometry(image_size, cfg.patch_fraction, 'patch', f'{key}.patch_fraction')


def build_model(encoder, cfg):
  return pretext.classifier_model(encoder, cfg, len(NEIGHBOURS), num_inputs=2)


init_extra = common.no_extra
update_extra = common.keep_extra


def make_inputs(rng, images, hp, image_size: int, cfg):
  """{'patches': [2B, p, p, C] (example b's centre patch at 2b, its neighbour at 2b + 1),
  'labels': [B] in [0, 8), 'cells': [B, 2], 'offsets': [B, 2, 2]}."""
  cell, patch = pretext.grid_geometry(image_size, cfg.patch_fraction, 'patch',
                                      'config.pretrain.relative_position.patch_fraction')
  k_view, k_label, k_jitter = jax.random.split(rng, 3)
  base = augment.augment(k_view, images, hp['strength'], image_size)
  batch, channels = base.shape[0], base.shape[-1]
  labels = jax.random.randint(k_label, (batch,), 0, len(NEIGHBOURS), jnp.int32)
  cells = jnp.stack([jnp.full((batch,), CENTRE, jnp.int32), jnp.asarray(NEIGHBOURS)[labels]],
                    axis=1)
  offsets = pretext.jitter(k_jitter, (batch, 2), cell, patch)
  patches = pretext.cut_tiles(base, cells, offsets, cell, patch)
  if cfg.normalise_patches:
    patches = pretext.normalise(patches)
  return {'patches': patches.reshape(batch * 2, patch, patch, channels), 'labels': labels,
          'cells': cells, 'offsets': offsets}


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  """8-way cross-entropy; aux['features'] of the centre patches."""
  del extra, hp, cfg
  return pretext.classification_loss(model, params, batch_stats, inputs['patches'],
                                     inputs['labels'], num_inputs=2)
