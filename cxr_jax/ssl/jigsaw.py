"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016).

The view (the stage's view size S, lightly augmented at the stage's strength) is cut into a
3 x 3 grid of cells of S // 3 px; from each cell a tile of floor(tile_fraction * cell) px
is cut at a random offset inside the cell (the gaps and the jitter keep the network from
solving the puzzle by continuing edges and textures across tile borders; the paper cuts 64
px tiles from 75 px cells, tile_fraction 0.85). The tiles are shuffled by one permutation
of a fixed set (`hamming_permutations`: chosen greedily for maximal Hamming distance,
by the paper's rule or a farthest-point variant), each tile is normalised to zero mean and unit variance on its own (as
in the paper, against shortcuts from low-level statistics), all 9B tiles go through the
shared encoder (siamese), each example's 9 feature vectors are concatenated in puzzle
order and an MLP classifies which permutation of the set was applied.

Sizes: tiles must be at least `pretext.MIN_TILE` (8) px, so S >= 30 at tile_fraction 0.85.
The 'imagenet' stem (stride 32) reduces a tile under 32 px to a 1 x 1 map made mostly of
padding; at the demo's 64 px (18 px tiles) the 'small' stem keeps a 3 x 3 map. The
paper's geometry is S = 225 (75 px cells, 64 px tiles).
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cxr_jax.data import augment
from cxr_jax.ssl import common, pretext

NUM_TILES = 9  # a 3 x 3 grid

VIEWS_PER_IMAGE = 9  # the 3 x 3 tiles, each through the encoder (compute accounting)
DEFAULTS = ml_collections.ConfigDict(dict(
    num_permutations=100,   # size of the permutation set = classes (paper: 1000; 100 here)
    permutation_seed=0,     # picks the set's first permutation (the rest follow greedily)
    permutation_rule='max_mean',  # greedy rule: 'max_mean' (the paper's) or 'max_min'
    tile_fraction=0.85,     # tile side / cell side (paper: 64 / 75)
    normalise_tiles=True,   # zero mean, unit variance per tile (paper)
    head_hidden_dim=512,    # hidden width of the permutation classifier (paper: 4096)
    head_layers=2,          # Dense layers of the classifier after the concatenation
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


RULES = ('max_mean', 'max_min')


@functools.lru_cache(maxsize=8)
def hamming_permutations(count: int, num_tiles: int = NUM_TILES, seed: int = 0,
                         rule: str = 'max_mean') -> np.ndarray:
  """A permutation set chosen greedily for large Hamming distances (the number of
  positions where two permutations differ).

  The first permutation is drawn uniformly (from `seed`) out of all num_tiles!; each next
  one is the permutation not yet chosen that maximises, over the chosen ones,
    'max_mean': its mean Hamming distance to them (Noroozi & Favaro's Algorithm 1, the
      'maximal' set of the paper; it does not bound the closest pair: at 100 of 9! the set
      holds pairs 2 apart, one swap of two tiles),
    'max_min': its smallest Hamming distance to them (farthest-point selection: the set's
      closest pair is then the last permutation's distance: 6 for 100 of 9!);
  ties go to the first in lexicographic order. Deterministic for its arguments.

  Returns:
    [count, num_tiles] int32; row p is a permutation of range(num_tiles).
  """
  if rule not in RULES:
    raise ValueError(f'config.pretrain.jigsaw.permutation_rule must be one of {RULES}, '
                     f'got {rule!r}')
  candidates = np.asarray(list(itertools.permutations(range(num_tiles))), np.int8)
  if not 1 <= count <= len(candidates):
    raise ValueError(f'config.pretrain.jigsaw.num_permutations must be in '
                     f'[1, {len(candidates)}] for {num_tiles} tiles, got {count}')
  chosen = [int(np.random.default_rng(seed).integers(len(candidates)))]
  # per candidate: summed (max_mean) or smallest (max_min) distance to the chosen ones
  score = np.zeros(len(candidates), np.int64) if rule == 'max_mean' else np.full(
      len(candidates), num_tiles + 1, np.int64)
  available = np.ones(len(candidates), bool)
  for _ in range(count - 1):
    available[chosen[-1]] = False
    distance = np.sum(candidates != candidates[chosen[-1]], axis=1)
    score = score + distance if rule == 'max_mean' else np.minimum(score, distance)
    chosen.append(int(np.argmax(np.where(available, score, -1))))
  return candidates[chosen].astype(np.int32)


def check(cfg, image_size: int, key: str):
  pretext.grid_geometry(image_size, cfg.tile_fraction, 'tile', f'{key}.tile_fraction')
  hamming_permutations(cfg.num_permutations, NUM_TILES, cfg.permutation_seed,
                       cfg.permutation_rule)


def build_model(encoder, cfg):
  return pretext.classifier_model(encoder, cfg, cfg.num_permutations, num_inputs=NUM_TILES)


init_extra = common.no_extra
update_extra = common.keep_extra


def make_inputs(rng, images, hp, image_size: int, cfg):
  """{'tiles': [9B, t, t, C], 'labels': [B] permutation indices, 'cells': [B, 9],
  'offsets': [B, 9, 2]}: puzzle position j of example b shows the tile cut from cell
  cells[b, j] = permutations[labels[b], j] at offset offsets[b, j]; the tiles of an
  example are consecutive, in puzzle order."""
  cell, tile = pretext.grid_geometry(image_size, cfg.tile_fraction, 'tile',
                                     'config.pretrain.jigsaw.tile_fraction')
  k_view, k_label, k_jitter = jax.random.split(rng, 3)
  base = augment.augment(k_view, images, hp['strength'], image_size)
  batch, channels = base.shape[0], base.shape[-1]
  permutations = jnp.asarray(hamming_permutations(cfg.num_permutations, NUM_TILES,
                                                  cfg.permutation_seed, cfg.permutation_rule))
  labels = jax.random.randint(k_label, (batch,), 0, cfg.num_permutations, jnp.int32)
  cells = permutations[labels]
  offsets = pretext.jitter(k_jitter, (batch, NUM_TILES), cell, tile)
  tiles = pretext.cut_tiles(base, cells, offsets, cell, tile)
  if cfg.normalise_tiles:
    tiles = pretext.normalise(tiles)
  return {'tiles': tiles.reshape(batch * NUM_TILES, tile, tile, channels), 'labels': labels,
          'cells': cells, 'offsets': offsets}


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  """Cross-entropy over the permutation set; aux['features'] of each puzzle's first tile."""
  del extra, hp, cfg
  return pretext.classification_loss(model, params, batch_stats, inputs['tiles'],
                                     inputs['labels'], num_inputs=NUM_TILES)
