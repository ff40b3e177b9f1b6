"""Tests for cxr_jax.data.pacing: difficulty scores and the paced Grain sampler."""
import grain
import numpy as np
import pytest

from cxr_jax import curriculum
from cxr_jax.data import pacing

N, BATCH = 40, 4


def _sampler(seed=7, kind='linear', start=0.25, full_at=20, **kwargs):
  difficulty = np.random.default_rng(0).permutation(N).astype(np.float64)
  g = lambda step: curriculum.pacing_fraction(kind, step, start, full_at)
  return pacing.PacedSampler(difficulty, g, BATCH, seed, **kwargs), difficulty


def test_batches_come_from_the_easiest_visible_fraction():
  sampler, difficulty = _sampler()
  rank = np.argsort(np.argsort(difficulty))  # 0 = easiest
  for step in range(0, 25):
    n = sampler.visible(step)
    # ceil(g(t) N), g linear from 0.25 to 1 at step 20
    assert n == min(N, int(np.ceil((0.25 + 0.75 * min(step, 20) / 20) * N - 1e-9)))
    keys = sampler.batch_indices(step)
    assert keys.shape == (BATCH,) and len(set(keys.tolist())) == BATCH  # no repeats
    assert np.all(rank[keys] < n)
  assert sampler.visible(0) == 10 and sampler.visible(10) == 25 and sampler.visible(20) == N


def test_draws_are_uniform_over_the_visible_set():
  sampler, difficulty = _sampler(kind='none')
  sampler.pacing = lambda step: 0.25  # the 10 easiest
  counts = np.bincount(np.concatenate([sampler.batch_indices(t) for t in range(500)]),
                       minlength=N)
  easiest = np.argsort(difficulty)[:10]
  assert counts.sum() == counts[easiest].sum() == 2000
  # 200 expected per example; binomial sd ~ 13
  assert counts[easiest].min() > 150 and counts[easiest].max() < 250


def test_resume_gives_the_same_order():
  first, _ = _sampler()
  uninterrupted = [first.batch_indices(t) for t in range(21)]
  resumed, _ = _sampler()
  for t in range(10, 21):
    np.testing.assert_array_equal(resumed.batch_indices(t), uninterrupted[t])
  # the same through Grain's global record indices
  records = [resumed[i].record_key for i in range(10 * BATCH, 21 * BATCH)]
  np.testing.assert_array_equal(records, np.concatenate(uninterrupted[10:]))
  other, _ = _sampler(seed=8)
  assert any(not np.array_equal(other.batch_indices(t), uninterrupted[t]) for t in range(21))


def _loader(sampler, shard):
  return grain.DataLoader(data_source=np.arange(N), sampler=sampler, shard_options=shard,
                          operations=[grain.transforms.Batch(BATCH // shard.shard_count)],
                          worker_count=0)


def test_grain_loader_order_and_checkpoint_resume():
  sampler, _ = _sampler(num_steps=21)
  iterator = iter(_loader(sampler, grain.sharding.NoSharding()))
  batches = [next(iterator) for _ in range(10)]
  state = iterator.get_state()
  batches += [next(iterator) for _ in range(11)]
  for t, batch in enumerate(batches):
    np.testing.assert_array_equal(batch, sampler.batch_indices(t))
  fresh_sampler, _ = _sampler(num_steps=21)
  resumed = iter(_loader(fresh_sampler, grain.sharding.NoSharding()))
  resumed.set_state(state)
  for t in range(10, 21):
    np.testing.assert_array_equal(next(resumed), batches[t])


def test_processes_split_each_global_batch():
  sampler, _ = _sampler(num_steps=6)
  loaders = [iter(_loader(sampler, grain.sharding.ShardOptions(p, 2, drop_remainder=True)))
             for p in range(2)]
  for t in range(6):
    local = [next(it) for it in loaders]
    for p in range(2):
      np.testing.assert_array_equal(local[p], sampler.process_batch_indices(t, p, 2))
    np.testing.assert_array_equal(np.sort(np.concatenate(local)),
                                  np.sort(sampler.batch_indices(t)))


def test_small_visible_set_and_bad_inputs():
  sampler, _ = _sampler(start=0.0)
  assert sampler.visible(0) == BATCH  # never fewer than a batch
  sampler, _ = _sampler(min_visible=2)
  sampler.pacing = lambda step: 0.0
  keys = sampler.batch_indices(3)  # 2 visible for a batch of 4: drawn with replacement
  assert len(set(keys.tolist())) <= 2
  with pytest.raises(ValueError, match='non-finite'):
    pacing.PacedSampler(np.asarray([0.0, np.nan]), lambda s: 1.0, 1, 0)
  with pytest.raises(IndexError):
    _sampler(num_steps=2)[0][2 * BATCH]


def test_image_statistics_by_hand():
  flat = np.full((16, 16), 128, np.uint8)
  halves = np.zeros((16, 16), np.uint8)
  halves[:, 8:] = 255
  ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
  images = np.stack([flat, halves, ramp])
  # entropy in bits of the 256-bin histogram: 0, 1, 8
  np.testing.assert_allclose(pacing.image_statistic_difficulty(images, 'entropy'), [0, 1, 8],
                             atol=1e-12)
  # minus the RMS contrast of x / 255: 0, 0.5, std of 0..255 / 255
  np.testing.assert_allclose(pacing.image_statistic_difficulty(images[..., None], 'contrast'),
                             [0, -0.5, -np.std(np.arange(256) / 255)], atol=1e-12)
  # float images are read on 0..1
  np.testing.assert_allclose(
      pacing.image_statistic_difficulty(halves[None] / 255.0, 'entropy'), [1.0])
  with pytest.raises(ValueError, match='statistic'):
    pacing.image_statistic_difficulty(images, 'sharpness')


def test_metadata_scores():
  np.testing.assert_array_equal(pacing.metadata_difficulty([3, 1, 2]), [3, 1, 2])
  np.testing.assert_array_equal(pacing.metadata_difficulty([3, 1, 2], higher_is_harder=False),
                                [-3, -1, -2])
  with pytest.raises(ValueError, match='row 1'):
    pacing.metadata_difficulty([0.0, np.nan])


def test_difficulty_from_config():
  images = np.stack([np.full((8, 8), 128, np.uint8), np.arange(64, dtype=np.uint8).reshape(8, 8)])
  columns = {'image': images, 'severity': np.asarray([2, 0])}
  asked = []

  def read_field(name):
    asked.append(name)
    return columns[name]

  for statistic in pacing.STATISTICS:
    np.testing.assert_array_equal(pacing.difficulty_from_config(statistic, read_field),
                                  pacing.image_statistic_difficulty(images, statistic))
  assert pacing.difficulty_from_config('metadata:severity', read_field).tolist() == [2.0, 0.0]
  assert asked == ['image', 'image', 'severity']
  for bad in ('loss_of_moon', 'metadata', 'metadata:', 'callable', 'Entropy'):
    with pytest.raises(ValueError, match=r'config\.curriculum\.difficulty .*metadata:<field>'):
      pacing.difficulty_from_config(bad, read_field)
  assert asked == ['image', 'image', 'severity']  # an unknown kind reads no data
