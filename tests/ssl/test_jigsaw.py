"""Tests for cxr_jax.ssl.jigsaw: the greedy Hamming permutation set against a brute-force
numpy computation, the tiles against numpy slicing of the view, and the loss against a
numpy cross-entropy of the same logits."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ssl import jigsaw, pretext
from tests.ssl import pretext_helpers as H


def brute_force_greedy(count, num_tiles, first, rule):
  """The greedy rules spelled out: from `first`, add the permutation with the largest mean
  ('max_mean', Noroozi & Favaro's Algorithm 1) or smallest ('max_min') Hamming distance to
  those chosen (the first in lexicographic order on ties)."""
  everything = [tuple(p) for p in itertools.permutations(range(num_tiles))]
  chosen = [everything[first]]
  reduce = np.mean if rule == 'max_mean' else np.min
  for _ in range(count - 1):
    def score(p):
      return reduce([sum(a != b for a, b in zip(p, q)) for q in chosen])
    rest = [p for p in everything if p not in chosen]
    chosen.append(max(rest, key=score))  # max keeps the first of equal ones
  return np.asarray(chosen)


def pairwise_hamming(perms):
  return [int(np.sum(a != b)) for a, b in itertools.combinations(perms, 2)]


@pytest.mark.parametrize('rule', ['max_mean', 'max_min'])
@pytest.mark.parametrize('num_tiles,count,seed', [(4, 6, 0), (4, 24, 3), (5, 12, 1)])
def test_permutation_set_follows_the_greedy_rule(num_tiles, count, seed, rule):
  got = jigsaw.hamming_permutations(count, num_tiles, seed, rule)
  assert got.shape == (count, num_tiles)
  assert len({tuple(p) for p in got}) == count  # distinct permutations
  assert all(sorted(p) == list(range(num_tiles)) for p in got.tolist())
  everything = [tuple(p) for p in itertools.permutations(range(num_tiles))]
  expected = brute_force_greedy(count, num_tiles, everything.index(tuple(got[0])), rule)
  np.testing.assert_array_equal(got, expected)
  if rule == 'max_min':  # the closest pair is the last one added and its nearest chosen one
    last = min(int(np.sum(got[-1] != q)) for q in got[:-1])
    assert min(pairwise_hamming(got)) == last


def test_the_default_sets_distances():
  # 100 of the 9! permutations (brute force over their 4950 pairs): farthest-point
  # selection keeps every pair at least 6 positions apart; the paper's mean rule has a
  # larger mean distance but pairs only 2 apart (one swap of two tiles)
  far = pairwise_hamming(jigsaw.hamming_permutations(100, 9, 0, 'max_min'))
  mean = pairwise_hamming(jigsaw.hamming_permutations(100, 9, 0, 'max_mean'))
  assert min(far) == 6 and min(mean) == 2
  assert np.mean(mean) > np.mean(far) > 8.0
  with pytest.raises(ValueError, match='config.pretrain.jigsaw.permutation_rule'):
    jigsaw.hamming_permutations(5, 4, 0, 'max')


def test_tiles_are_the_jittered_cells_in_permutation_order():
  x = H.images(batch=2, size=48)
  cfg = jigsaw.DEFAULTS.copy_and_resolve_references()
  cfg.num_permutations, cfg.tile_fraction = 10, 0.7
  hp = {'strength': jnp.float32(0.0)}
  for normalise in (False, True):
    cfg.normalise_tiles = normalise
    inputs = jigsaw.make_inputs(jax.random.PRNGKey(2), x, hp, 48, cfg)
    cell, tile = 16, 11
    assert inputs['tiles'].shape == (2 * 9, tile, tile, 1)
    perms = jigsaw.hamming_permutations(10, 9, 0)
    labels, offsets = np.asarray(inputs['labels']), np.asarray(inputs['offsets'])
    assert offsets.min() >= 0 and offsets.max() <= cell - tile
    base = H.resized(x, 48)
    for b in range(2):
      for j in range(9):
        r, c = divmod(int(perms[labels[b], j]), 3)
        y, xx = r * cell + offsets[b, j, 0], c * cell + offsets[b, j, 1]
        expected = base[b, y:y + tile, xx:xx + tile]
        if normalise:
          expected = (expected - expected.mean()) / np.sqrt(expected.var() + 1e-5)
        np.testing.assert_allclose(inputs['tiles'][b * 9 + j], expected, rtol=1e-5, atol=1e-5)


def test_loss_is_the_cross_entropy_of_the_concatenated_tile_features():
  x = H.images(batch=3, size=48)
  cfg = jigsaw.DEFAULTS.copy_and_resolve_references()
  cfg.num_permutations, cfg.head_hidden_dim = 10, 8
  inputs = jigsaw.make_inputs(jax.random.PRNGKey(3), x, {'strength': jnp.float32(0.2)}, 48, cfg)
  model, params, batch_stats = H.init(jigsaw, cfg, x)
  out = model.apply({'params': params, 'batch_stats': batch_stats}, inputs['tiles'],
                    train=True, mutable=['batch_stats'],
                    method=pretext.PretextClassifier.classify)[0]
  assert out['logits'].shape == (3, 10)
  # siamese: the head sees each puzzle's 9 tile features concatenated in puzzle order
  head_in = np.asarray(out['features']).reshape(3, 9 * H.FEATURES)
  head = model.head.apply({'params': params['head'], 'batch_stats': batch_stats['head']},
                          head_in, train=True, mutable=['batch_stats'])[0]
  np.testing.assert_allclose(head, out['logits'], rtol=1e-5, atol=1e-6)
  loss = H.check_interface(jigsaw, cfg, model, params, batch_stats, inputs, batch=3)
  np.testing.assert_allclose(float(loss), H.numpy_cross_entropy(out['logits'], inputs['labels']),
                             rtol=1e-5)


def test_too_small_tiles_are_a_config_error():
  cfg = jigsaw.DEFAULTS.copy_and_resolve_references()
  with pytest.raises(ValueError, match=r'config.pretrain.jigsaw.tile_fraction: a tile of 5 px'):
    jigsaw.check(cfg, 20, 'config.pretrain.jigsaw')
  jigsaw.check(cfg, 32, 'config.pretrain.jigsaw')  # 10 px cells, 8 px tiles: accepted
  assert pretext.MIN_TILE == 8
