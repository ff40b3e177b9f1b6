"""Tests for cxr_jax.ssl.relative_position (Doersch et al.): the patch pairs against numpy
slicing of the view, and the loss against a numpy cross-entropy of the same logits."""
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.ssl import relative_position as rp
from tests.ssl import pretext_helpers as H


def test_patches_are_the_centre_and_the_labelled_neighbour():
  x = H.images(batch=4, size=48)
  cfg = rp.DEFAULTS.copy_and_resolve_references()
  cfg.normalise_patches = False
  inputs = rp.make_inputs(jax.random.PRNGKey(4), x, {'strength': jnp.float32(0.0)}, 48, cfg)
  cell, patch = 16, 12
  assert inputs['patches'].shape == (8, patch, patch, 1)
  labels, offsets = np.asarray(inputs['labels']), np.asarray(inputs['offsets'])
  assert set(labels.tolist()) <= set(range(8))
  # label k <-> neighbour cell (row, column), row-major without the centre
  neighbour = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
  base = H.resized(x, 48)
  for b in range(4):
    for n, (r, c) in enumerate([(1, 1), neighbour[labels[b]]]):
      y, xx = r * cell + offsets[b, n, 0], c * cell + offsets[b, n, 1]
      np.testing.assert_allclose(inputs['patches'][2 * b + n], base[b, y:y + patch, xx:xx + patch],
                                 rtol=1e-6, atol=1e-6)


def test_loss_is_the_cross_entropy_of_the_model_logits():
  x = H.images(batch=4, size=48)
  cfg = rp.DEFAULTS.copy_and_resolve_references()
  cfg.head_hidden_dim = 8
  inputs = rp.make_inputs(jax.random.PRNGKey(5), x, {'strength': jnp.float32(0.2)}, 48, cfg)
  np.testing.assert_allclose(np.mean(np.asarray(inputs['patches']), axis=(1, 2, 3)), 0, atol=1e-5)
  model, params, batch_stats = H.init(rp, cfg, x)
  logits = H.classifier_logits(model, params, batch_stats, inputs['patches'])
  assert logits.shape == (4, 8)
  loss = H.check_interface(rp, cfg, model, params, batch_stats, inputs, batch=4)
  np.testing.assert_allclose(float(loss), H.numpy_cross_entropy(logits, inputs['labels']),
                             rtol=1e-5)
