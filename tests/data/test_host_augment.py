"""Host-side views (numpy/OpenCV) follow the device path's contract (augment.py).

Host and device draw from different generators, so they are compared in distribution:
at strength 0 exactly (the eval-time resize), and for each random operation by a
two-sample Kolmogorov-Smirnov test on a statistic that reads the operation back from
the view (crop area from ramp images, flip from the ramp's direction, brightness and
gamma from a flat image, noise from the spread of a flat image).
"""
import dataclasses

import jax
import numpy as np
import pytest
from scipy import stats

from cxr_jax.data import augment
from cxr_jax.data import host_augment as ha

OFF = augment.AugmentParams(min_scale=1.0, max_log_ratio=0.0, flip_prob=0.0,
                            brightness=0.0, contrast=0.0, gamma=0.0, blur_prob=0.0,
                            noise_std=0.0)
N = 400


def _device(image, strength, out, params, n=N, seed=0):
  batch = np.repeat(image[None], n, axis=0)
  return np.asarray(jax.jit(augment.augment, static_argnums=(3, 4))(
      jax.random.key(seed), batch, strength, out, params))


def _host(image, strength, out, params, n=N, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([ha.augment_one(rng, image, strength, out, params) for _ in range(n)])


def _same_distribution(a, b, alpha=1e-3):
  result = stats.ks_2samp(a, b)
  assert result.pvalue > alpha, (result, np.mean(a), np.mean(b))


@pytest.mark.parametrize('size,out', [(64, 32), (32, 48), (40, 40)])
def test_strength_zero_is_the_device_resize(size, out):
  image = np.random.default_rng(0).integers(0, 256, (size, size, 1), dtype=np.uint8)
  device = np.asarray(augment.resize(image[None], out))[0]
  np.testing.assert_allclose(ha.resize(image, out), device, atol=2e-6)
  rng = np.random.default_rng(1)
  np.testing.assert_allclose(ha.augment_one(rng, image, 0.0, out), device, atol=2e-6)
  views = ha.TwoViews(out, strength=0.0).map_with_index(0, {'image': image})
  for v in (views['view1'], views['view2']):
    assert v.dtype == np.uint8 and v.shape == (out, out, 1)
    assert np.abs(v / 255.0 - device).max() <= 0.5 / 255 + 1e-6  # rounding only


def test_crop_box_matches_the_device_resampling():
  image = np.random.default_rng(2).random((50, 60, 1), dtype=np.float32)
  for box in [(3.3, 7.9, 20.5, 31.2), (0.0, 0.0, 50.0, 60.0), (10.0, 2.5, 9.7, 50.1)]:
    device = np.asarray(augment._crop_resize(image, *box, 24))
    np.testing.assert_allclose(ha.crop_resize(image, *box, 24), device, atol=2e-5)


def _ramps(size=96):
  ramp = ((np.arange(size) + 0.5) / size).astype(np.float32)
  return (np.broadcast_to(ramp[None, :, None], (size, size, 1)).copy(),
          np.broadcast_to(ramp[:, None, None], (size, size, 1)).copy())


def _fraction(views, axis, size, out):
  """The crop's side fraction read from a ramp view: slope between the quarter lines."""
  q = out // 4
  mid = out // 2
  if axis == 1:
    diff = views[:, mid, 3 * q, 0] - views[:, mid, q, 0]
  else:
    diff = views[:, 3 * q, mid, 0] - views[:, q, mid, 0]
  return np.abs(diff) * out / (2 * q)


@pytest.mark.parametrize('strength', [1.0, 0.5])
def test_crop_area_and_aspect_distributions_match(strength):
  size, out = 96, 32
  params = dataclasses.replace(OFF, min_scale=0.2, max_log_ratio=augment._DEFAULT_MAX_LOG_RATIO)
  rx, ry = _ramps(size)
  # The same seed gives the same draws for both ramps (draws do not depend on pixels).
  dev_fw = _fraction(_device(rx, strength, out, params), 1, size, out)
  dev_fh = _fraction(_device(ry, strength, out, params), 0, size, out)
  host_fw = _fraction(_host(rx, strength, out, params), 1, size, out)
  host_fh = _fraction(_host(ry, strength, out, params), 0, size, out)
  _same_distribution(host_fw * host_fh, dev_fw * dev_fh)
  _same_distribution(np.log(host_fw / host_fh), np.log(dev_fw / dev_fh))
  # and both follow the contract: area uniform on [1 - 0.8 s, 1]
  lo = 1 - 0.8 * strength
  for area in (host_fw * host_fh, dev_fw * dev_fh):
    assert area.min() > lo - 0.02 and area.max() <= 1.0 + 1e-3
    assert stats.kstest((area - lo) / (1 - lo), 'uniform').pvalue > 1e-3


def test_flip_rate_matches():
  params = dataclasses.replace(OFF, flip_prob=0.5)
  rx, _ = _ramps(32)
  for s in (1.0, 0.4):
    flipped = lambda v: np.mean(v[:, 16, 0, 0] > v[:, 16, -1, 0])
    host, dev = flipped(_host(rx, s, 32, params)), flipped(_device(rx, s, 32, params))
    sd = np.sqrt(0.5 * s * (1 - 0.5 * s) / N)
    assert abs(host - 0.5 * s) < 4 * sd and abs(dev - 0.5 * s) < 4 * sd


@pytest.mark.parametrize('field,amplitude', [('brightness', 0.4), ('gamma', 0.4)])
def test_photometric_ranges_match(field, amplitude):
  params = dataclasses.replace(OFF, **{field: amplitude})
  flat = np.full((16, 16, 1), 0.5, np.float32)
  host = _host(flat, 1.0, 16, params)[:, 0, 0, 0]
  dev = _device(flat, 1.0, 16, params)[:, 0, 0, 0]
  _same_distribution(host, dev)
  if field == 'brightness':
    lo, hi = 0.5 * (1 - amplitude), 0.5 * (1 + amplitude)
  else:
    lo, hi = 0.5**np.exp(amplitude), 0.5**np.exp(-amplitude)
  for v in (host, dev):
    assert v.min() >= lo - 1e-5 and v.max() <= hi + 1e-5
    assert v.min() < lo + 0.05 * (hi - lo) and v.max() > hi - 0.05 * (hi - lo)


def test_contrast_matches():
  params = dataclasses.replace(OFF, contrast=0.4)
  image = np.zeros((16, 16, 1), np.float32)
  image[:, 8:] = 0.6
  image[:, :8] = 0.2
  spread = lambda v: v[:, 0, -1, 0] - v[:, 0, 0, 0]
  host, dev = spread(_host(image, 1.0, 16, params)), spread(_device(image, 1.0, 16, params))
  _same_distribution(host, dev)


def test_noise_and_blur_match():
  params = dataclasses.replace(OFF, noise_std=0.05)
  flat = np.full((32, 32, 1), 0.5, np.float32)
  _same_distribution(_host(flat, 1.0, 32, params).std(axis=(1, 2, 3)),
                     _device(flat, 1.0, 32, params).std(axis=(1, 2, 3)))
  params = dataclasses.replace(OFF, blur_prob=0.5)
  checker = (np.indices((32, 32)).sum(0) % 2).astype(np.float32)[..., None]
  host, dev = _host(checker, 1.0, 32, params), _device(checker, 1.0, 32, params)
  # a blurred checkerboard loses contrast; the sigma distribution sets how much
  _same_distribution(host.std(axis=(1, 2, 3)), dev.std(axis=(1, 2, 3)))


def test_blur_kernel_and_border_match_the_device():
  x = np.random.default_rng(3).random((20, 20, 1), dtype=np.float32)
  for sigma in (0.3, 1.5):
    device = np.asarray(augment._gaussian_blur(x, np.float32(sigma), 5))
    np.testing.assert_allclose(ha.gaussian_blur(x, sigma, 5), device, atol=1e-5)


def test_map_with_index_is_deterministic_and_scheduled():
  image = np.random.default_rng(4).integers(0, 256, (48, 48, 1), dtype=np.uint8)
  views = ha.TwoViews(32, strength=lambda step: 0.0 if step < 2 else 1.0, batch_size=4,
                      seed=7, keep=('label',))
  record = {'image': image, 'label': np.int32(3)}
  a, b = views.map_with_index(9, record), views.map_with_index(9, record)
  np.testing.assert_array_equal(a['view1'], b['view1'])
  assert a['label'] == 3 and set(a) == {'view1', 'view2', 'label'}
  assert not np.array_equal(a['view1'], a['view2'])
  early = views.map_with_index(3, record)  # step 0: strength 0, both views the resize
  np.testing.assert_array_equal(early['view1'], early['view2'])


def test_image2_gives_view_two_and_the_same_image_gives_todays_views():
  rng = np.random.default_rng(4)
  image, other = rng.integers(0, 256, (2, 48, 48, 1), dtype=np.uint8)
  views = ha.TwoViews(32, strength=0.0, seed=7)  # strength 0: each view is its image resized
  plain = views.map_with_index(5, {'image': image})
  paired = views.map_with_index(5, {'image': image, 'image2': other})
  np.testing.assert_array_equal(paired['view1'], plain['view1'])
  np.testing.assert_array_equal(paired['view2'], views.map_with_index(5, {'image': other})['view1'])
  strong = ha.TwoViews(32, strength=1.0, seed=7)
  a = strong.map_with_index(5, {'image': image})
  b = strong.map_with_index(5, {'image': image, 'image2': image})
  for k in ('view1', 'view2'):
    np.testing.assert_array_equal(a[k], b[k])


def test_runs_in_a_grain_pipeline():
  import grain
  images = np.random.default_rng(5).integers(0, 256, (16, 40, 40, 1), dtype=np.uint8)
  source = [{'image': im} for im in images]
  ds = (grain.MapDataset.source(source).shuffle(seed=0)
        .map_with_index(ha.TwoViews(24, batch_size=4).map_with_index).batch(4))
  batch = ds[0]
  assert batch['view1'].shape == (4, 24, 24, 1) and batch['view1'].dtype == np.uint8
  loader = grain.DataLoader(
      data_source=source, sampler=grain.samplers.IndexSampler(16, shuffle=False, num_epochs=1, seed=0),
      operations=[ha.make_random_map(24), grain.transforms.Batch(8)], worker_count=0)
  batches = list(loader)
  assert len(batches) == 2 and batches[0]['view2'].shape == (8, 24, 24, 1)
