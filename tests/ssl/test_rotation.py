"""Tests for cxr_jax.ssl.rotation (RotNet): the rotated copies and labels against numpy's
rot90, and the loss against a numpy cross-entropy of the same logits."""
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.ssl import rotation
from tests.ssl import pretext_helpers as H


def test_inputs_are_the_four_rotations_with_their_labels():
  x = H.images(batch=3, size=32)
  cfg = rotation.DEFAULTS.copy_and_resolve_references()
  inputs = rotation.make_inputs(jax.random.PRNGKey(0), x, {'strength': jnp.float32(0.0)}, 24, cfg)
  base = H.resized(x, 24)
  expected = np.concatenate([np.stack([np.rot90(img, k, axes=(0, 1)) for img in base])
                             for k in range(4)])
  np.testing.assert_array_equal(np.asarray(inputs['images']), expected)
  np.testing.assert_array_equal(inputs['labels'], np.repeat(np.arange(4), 3))
  # 90 degrees counter-clockwise: the top row becomes the left column, read upwards
  np.testing.assert_array_equal(expected[3, :, 0, 0], base[0, 0, ::-1, 0])


def test_loss_is_the_cross_entropy_of_the_model_logits():
  x = H.images(batch=3, size=32)
  cfg = rotation.DEFAULTS.copy_and_resolve_references()
  cfg.head_hidden_dim = 8
  inputs = rotation.make_inputs(jax.random.PRNGKey(1), x, {'strength': jnp.float32(0.3)}, 32, cfg)
  model, params, batch_stats = H.init(rotation, cfg, x)
  logits = H.classifier_logits(model, params, batch_stats, inputs['images'])
  assert logits.shape == (12, 4)
  loss = H.check_interface(rotation, cfg, model, params, batch_stats, inputs, batch=3)
  np.testing.assert_allclose(float(loss), H.numpy_cross_entropy(logits, inputs['labels']),
                             rtol=1e-5)
  features = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
  assert features['features'].shape == (3, H.FEATURES)  # the monitors' whole-image features
