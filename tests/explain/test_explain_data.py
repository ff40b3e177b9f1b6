"""config.explain.data end to end: a model fine-tuned on the phantom, its lung attention
measured on the real COVID-QU-Ex sample with lung masks (../shared/data/real; skipped
without it). The explained set's classes are not the model's, so only the predicted class
is explained; the lung areas are checked against the mask PNGs read independently."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_experiment import tiny_config

REAL = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'real'
QU_EX = REAL / 'covid_qu_ex_tiny'


def _png_lung_areas(size: int) -> list[float]:
  """Area fraction of each lung-mask PNG after a nearest resize to size x size."""
  areas = []
  for png in sorted(QU_EX.glob('Infection Segmentation Data/*/*/lung masks/*.png')):
    m = Image.open(png).convert('L').resize((size, size), Image.NEAREST)
    areas.append(float((np.asarray(m) > 0).mean()))
  return sorted(areas)


def test_lung_shares_on_another_masked_dataset(tmp_path, tiny_data_dir):
  if not QU_EX.is_dir():
    pytest.skip(f'real data folder {QU_EX} absent (see ../shared/data/real/README.md)')
  from cxr_jax import experiment
  config = tiny_config(tiny_data_dir)
  config.finetune.inits, config.finetune.num_seeds = 'scratch', 1
  config.finetune.steps, config.finetune.eval_every, config.finetune.batch_size = 2, 2, 8
  config.finetune.image_size, config.eval_batch_size = 32, 16
  config.model.stem = 'small'  # a 4x4 Grad-CAM map at 32 px
  config.explain.enabled, config.explain.num_overlays = True, 1
  config.explain.randomise = 'full'
  config.explain.data.update(dict(name='covid_qu_ex', options='config=infection,size=32',
                                  manual_dir=str(QU_EX), split='test'))
  experiment.run(config, tmp_path)
  with np.load(tmp_path / 'finetune' / 'scratch' / '1' / 'seed0' / 'attention.npz') as f:
    a = {k: f[k] for k in f.files}
  assert str(a['explain_data']) == 'covid_qu_ex:test' and str(a['mask_source']) == 'dataset'
  assert a['probs'].shape == (12, 4)  # the phantom model's 4 classes on 12 real images
  np.testing.assert_array_equal(a['labels'], -1)  # other classes: not the model's labels
  assert np.all(np.isnan(a['lung_share_true']))
  np.testing.assert_allclose(sorted(a['lung_area']), _png_lung_areas(32), atol=0.03)
  share = a['lung_share_pred']
  ok = ~np.isnan(share)
  assert ok.sum() >= 6  # NaN only where a map is all zero
  assert np.all(share[ok] >= 0) and np.all(share[ok] * a['lung_area'][ok] <= 1 + 1e-9)
  assert a['randomised_full_spearman'].shape == (12,)
  report = (tmp_path / 'report.md').read_text()
  assert 'Explained images and lung masks: covid_qu_ex:test with masks from the dataset' in report
  assert 'ρ(trained, full randomised)' in report
