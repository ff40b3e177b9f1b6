"""The lung segmenter: Dice and loss against numpy written out, the U-Net's shapes, a
save/load round trip, and a few training steps that must lower the loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.cli import segment
from cxr_jax.models import segmenter
from cxr_jax.models.unet import UNet


def test_dice_matches_the_formula_by_hand():
  pred = np.zeros((3, 4, 4), np.uint8)
  true = np.zeros((3, 4, 4), np.uint8)
  pred[0, :2] = 1          # 8 pixels
  true[0, 1:3] = 1         # 8 pixels, 4 shared -> 2*4 / 16
  pred[1, 0, 0] = 255      # one predicted pixel, nothing true -> 0
  # image 2: both empty -> 1 by definition
  np.testing.assert_allclose(segment.dice(pred, true), [0.5, 0.0, 1.0])
  rng = np.random.default_rng(0)
  p, t = rng.random((5, 9, 9)) > 0.5, rng.random((5, 9, 9)) > 0.3
  expected = [2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()) for a, b in zip(p, t)]
  np.testing.assert_allclose(segment.dice(p, t), expected)
  with pytest.raises(ValueError, match='different shapes'):
    segment.dice(p, t[:, :8])


def test_loss_is_bce_plus_soft_dice():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 5))
  masks = (rng.random((2, 5, 5)) > 0.5).astype(np.float64)
  p = 1 / (1 + np.exp(-logits))
  bce = -(masks * np.log(p) + (1 - masks) * np.log(1 - p)).mean(axis=(1, 2))
  soft = (2 * (p * masks).sum((1, 2)) + 1) / (p.sum((1, 2)) + masks.sum((1, 2)) + 1)
  got = segment.dice_bce_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(masks))
  assert float(got) == pytest.approx(float(np.mean(bce + 1 - soft)), rel=1e-5)


def _blob_data(n, size, seed):
  """Images with a bright ellipse (the 'lung') on noise, and the ellipse as mask."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] / size
  images, masks = [], []
  for _ in range(n):
    cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.15, 0.3)
    m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)
    img = np.clip(rng.normal(60, 20, (size, size)) + 120 * m, 0, 255)
    images.append(img.astype(np.uint8)[..., None])
    masks.append(m.astype(np.uint8))
  return np.stack(images), np.stack(masks)


def test_unet_trains_and_predicts_masks_at_the_input_size(tmp_path):
  images, masks = _blob_data(16, 16, 0)
  train_set = segment.MaskedSet('blobs', images, masks, np.arange(16).astype(str),
                                np.full(16, 'train'))
  from cxr_jax.train import sharding
  variables = segment.train(tmp_path, train_set, features=(8, 16), steps=40, batch_size=8,
                            lr=3e-3, seed=0, mesh=sharding.make_mesh())
  seg = segmenter.Segmenter(variables, (8, 16), 16)
  big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # another storage size
  pred = seg.predict_masks(big[:5], batch_size=4)
  assert pred.shape == (5, 32, 32) and pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}
  d = segment.dice(seg.predict_masks(images), masks)
  assert d.mean() > 0.6  # the blobs are easy; an untrained net scores ~0.3
  segmenter.save(tmp_path, variables, (8, 16), 16, {'dice': {}})
  again = segmenter.load(tmp_path)
  np.testing.assert_array_equal(again.predict_masks(images), seg.predict_masks(images))
  with pytest.raises(FileNotFoundError, match='no trained segmenter'):
    segmenter.load(tmp_path / 'nothing')
  with pytest.raises(ValueError, match='divisible by 2'):
    UNet(features=(4, 8)).init(jax.random.PRNGKey(0), jnp.zeros((1, 15, 15, 1)))


def test_parse_spec():
  s = segment.parse_spec('covid_qu_ex:/data/qu:config=lung', 64)
  assert (s.name, s.manual_dir, s.options) == ('covid_qu_ex', '/data/qu', 'config=lung,size=64')
  assert segment.parse_spec('x:/d:size=32+config=a', 64).options == 'size=32,config=a'
  with pytest.raises(ValueError, match='BUILDER:MANUAL_DIR'):
    segment.parse_spec('covid_qu_ex', 64)


def test_explain_set_takes_lung_masks_from_a_segmenter(tmp_path, tiny_data_dir):
  """config.explain.masks='segmenter:<folder>': the explained images' masks are the
  segmenter's predictions at the images' size, and the source is recorded."""
  from cxr_jax import finetuning
  from cxr_jax import attention_job
  from tests.test_experiment import tiny_config
  config = tiny_config(tiny_data_dir)
  model = UNet(features=(8, 16))
  variables = jax.device_get(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1))))
  segmenter.save(tmp_path, variables, (8, 16), 16, {})
  config.explain.masks = f'segmenter:{tmp_path}'
  data = finetuning.EvalData(config.finetune.data, tiny_data_dir, image_cache=False)
  images = attention_job.explain_set(config.explain, data, tiny_data_dir,
                                     config.finetune.data.test_split, config.eval_batch_size)
  expected = segmenter.load(tmp_path).predict_masks(data.test['image'])
  np.testing.assert_array_equal(images.masks, expected)
  assert images.masks.shape == data.test['image'].shape[:3]
  assert images.mask_source == f'segmenter:{tmp_path}'
  np.testing.assert_array_equal(images.labels, data.test['label'])  # the model's own classes
