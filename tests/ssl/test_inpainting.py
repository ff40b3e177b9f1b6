"""Tests for cxr_jax.ssl.inpainting (context encoder): the masked views and masks against a
numpy construction, and the loss against a numpy masked L2 of the same reconstruction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.ssl import inpainting
from tests.ssl import pretext_helpers as H


def numpy_loss(reconstruction, targets, mask, outside_weight):
  err = (np.asarray(reconstruction, np.float64) - np.asarray(targets, np.float64)) ** 2
  m = np.broadcast_to(np.asarray(mask, bool), err.shape)
  return err[m].mean() + outside_weight * err[~m].mean()


@pytest.mark.parametrize('position', ['random', 'center'])
def test_the_square_is_masked_with_the_view_mean(position):
  x = H.images(batch=3, size=32)
  cfg = inpainting.DEFAULTS.copy_and_resolve_references()
  cfg.position, cfg.mask_fraction = position, 0.375
  inputs = inpainting.make_inputs(jax.random.PRNGKey(6), x, {'strength': jnp.float32(0.0)}, 32, cfg)
  base = H.resized(x, 32)
  np.testing.assert_array_equal(inputs['targets'], base)
  mask = np.asarray(inputs['mask'])[..., 0]
  for b in range(3):
    rows, cols = np.nonzero(mask[b])
    y0, x0 = rows.min(), cols.min()
    assert mask[b].sum() == 12 * 12  # one 12 x 12 square (0.375 x 32)
    assert mask[b, y0:y0 + 12, x0:x0 + 12].all()
    if position == 'center':
      assert (y0, x0) == (10, 10)
    expected = base[b].copy()
    expected[y0:y0 + 12, x0:x0 + 12] = base[b].mean()
    np.testing.assert_allclose(inputs['images'][b], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('outside_weight', [0.0, 0.1])
def test_loss_is_the_masked_l2_of_the_reconstruction(outside_weight):
  x = H.images(batch=3, size=32)
  cfg = inpainting.DEFAULTS.copy_and_resolve_references()
  cfg.outside_weight, cfg.decoder_width = outside_weight, 8
  inputs = inpainting.make_inputs(jax.random.PRNGKey(7), x, {'strength': jnp.float32(0.3)}, 32, cfg)
  model, params, batch_stats = H.init(inpainting, cfg, x)
  assert model.decoder.upsamplings == 2  # the tiny encoder's stride is 4
  out = model.apply({'params': params, 'batch_stats': batch_stats}, inputs['images'], train=True,
                    mutable=['batch_stats'], method=inpainting.ContextEncoder.reconstruct)[0]
  assert out['reconstruction'].shape == (3, 32, 32, 1)
  loss = H.check_interface(inpainting, cfg, model, params, batch_stats, inputs, batch=3)
  np.testing.assert_allclose(float(loss), numpy_loss(out['reconstruction'], inputs['targets'],
                                                     inputs['mask'], outside_weight), rtol=1e-5)


def test_settings_are_checked_naming_the_key():
  cfg = inpainting.DEFAULTS.copy_and_resolve_references()
  cfg.mask_fraction = 1.0
  with pytest.raises(ValueError, match=r'config.pretrain.inpainting.mask_fraction=1.0'):
    inpainting.check(cfg, 32, 'config.pretrain.inpainting')
  cfg.mask_fraction, cfg.position = 0.5, 'corner'
  with pytest.raises(ValueError, match=r'config.pretrain.inpainting.position must be one of'):
    inpainting.check(cfg, 32, 'config.pretrain.inpainting')
