"""covid_qu_ex: fixture in the exact Kaggle layout, bad inputs, and the real subset."""
import os
import re
from pathlib import Path

import numpy as np
import pytest

from cxr_jax.data.builders import covid_qu_ex
from cxr_jax.data.validate import DataValidationError

LUNG = 'Lung Segmentation Data'
INF = 'Infection Segmentation Data'


def _make(h, root: Path, subset=INF, nested=True):
  """A tiny COVID-QU-Ex copy: 2 images per class in Train, 1 in Val and Test."""
  base = root / subset / subset if nested else root / subset
  names = {'COVID-19': 'covid_{}.png', 'Non-COVID': 'non_COVID ({}).png',
           'Normal': 'Normal ({}).png'}
  counts = {'Train': 2, 'Val': 1, 'Test': 1}
  n = 0
  for split, k in counts.items():
    for cls, pattern in names.items():
      for _ in range(k):
        n += 1
        name = pattern.format(n)
        d = base / split / cls
        # Mixed modes as in the real data: some RGB, some gray.
        h.save(d / 'images' / name, h.chest(40, 40, seed=n), 'RGB' if n % 2 else None)
        h.save(d / 'lung masks' / name, h.lung_mask(40, 40))
        if subset == INF:
          inf = np.zeros((40, 40), np.uint8)
          if cls == 'COVID-19':
            inf[10:20, 6:14] = 255
          h.save(d / 'infection masks' / name, inf)
  return root


def test_fixture_labels_masks_splits(h, build, tmp_path):
  root = _make(h, tmp_path / 'qu')
  builder, data = build('covid_qu_ex', root, config='infection')
  assert {s: len(r) for s, r in data.items()} == {'train': 6, 'val': 3, 'test': 3}
  assert builder.CLASS_NAMES == ('COVID-19', 'Non-COVID', 'Normal')
  for records in data.values():
    for r in records:
      rid = r['id'].decode()
      assert rid.startswith(f'{INF}/{INF}/')
      cls = rid.split('/')[3]
      assert r['label'] == covid_qu_ex.CLASS_NAMES.index(cls)
      assert r['image'].shape == (h.SIZE, h.SIZE, 1) and r['image'].dtype == np.uint8
      h.check_orientation(r['image'])
      assert r['has_mask'] and set(np.unique(r['mask'])) == {0, 1}
      # The lung mask covers the dark lung fields, not the mediastinum.
      img, mask = r['image'][..., 0], r['mask'][..., 0].astype(bool)
      assert img[mask].mean() < img[~mask & (img > 0)].mean()
      assert r['has_infection_mask']
      assert r['infection_mask'].any() == (cls == 'COVID-19')
      assert r['patient_id'].decode() == f'{cls}/{Path(rid).stem}'
  assert builder.info.metadata['num_skipped'] == 0


def test_lung_config_and_wrong_config_message(h, build, tmp_path):
  root = _make(h, tmp_path / 'qu', subset=LUNG, nested=False)
  _, data = build('covid_qu_ex', root)  # default config: lung
  r = data['train'][0]
  assert r['has_mask'] and not r['has_infection_mask'] and not r['infection_mask'].any()
  with pytest.raises(DataValidationError, match="use config='lung'"):
    build('covid_qu_ex', root, config='infection')


def test_bad_inputs_reported_together_and_nothing_written(h, build, tmp_path):
  root = _make(h, tmp_path / 'qu')
  base = root / INF / INF
  os.remove(base / 'Train' / 'Normal' / 'lung masks' / 'Normal (5).png')
  cut = base / 'Val' / 'COVID-19' / 'images' / 'covid_7.png'
  cut.write_bytes(cut.read_bytes()[:60])
  h.save(base / 'Test' / 'Pneumonia' / 'images' / 'x.png', h.chest())
  with pytest.raises(DataValidationError) as err:
    build('covid_qu_ex', root, config='infection')
  text = str(err.value)
  assert '3 problem(s)' in text
  assert 'missing file: Infection Segmentation Data/Infection Segmentation Data/Train/' \
         'Normal/lung masks/Normal (5).png' in text
  assert 'unreadable image' in text and 'covid_7.png' in text
  assert "unknown label" in text and "'Pneumonia'" in text
  # Nothing that reads as a prepared dataset is left behind.
  out = tmp_path / 'tfds' / 'covid_qu_ex'
  leftovers = [p for p in out.rglob('*') if p.is_file()] if out.exists() else []
  assert not any(p.name == 'dataset_info.json' for p in leftovers)
  assert not any('incomplete' in str(p) for p in out.rglob('*')) if out.exists() else True


def test_skip_bad_files_records_them(h, build, tmp_path):
  root = _make(h, tmp_path / 'qu')
  base = root / INF / INF
  cut = base / 'Val' / 'COVID-19' / 'images' / 'covid_7.png'
  cut.write_bytes(cut.read_bytes()[:60])
  builder, data = build('covid_qu_ex', root, config='infection', skip_bad_files=True)
  assert len(data['val']) == 2
  skipped = builder.info.metadata['skipped_files']
  assert builder.info.metadata['num_skipped'] == 1 and 'covid_7.png' in skipped[0]
  assert re.fullmatch(r'infection_size-32_skip_bad_files-true_[0-9a-f]{8}',
                      builder.builder_config.name)


def test_empty_folder(build, tmp_path):
  (tmp_path / 'empty' / 'nothing here').mkdir(parents=True)
  with pytest.raises(DataValidationError, match='no images found'):
    build('covid_qu_ex', tmp_path / 'empty', config='infection')


def test_real_subset(h, build):
  real = h.real_or_skip('covid_qu_ex_tiny')
  builder, data = build('covid_qu_ex', real, config='infection', size=64)
  assert list(data) == ['test'] and len(data['test']) == 12
  labels = sorted(int(r['label']) for r in data['test'])
  assert labels == [0] * 4 + [1] * 4 + [2] * 4
  for r in data['test']:
    mask = r['mask'][..., 0].astype(bool)
    assert r['has_mask'] and 0.1 < mask.mean() < 0.6
    # Real radiographs, not inverted and masks aligned: lungs darker than mediastinum.
    lungs, mediastinum = h.lungs_and_mediastinum(r['image'], r['mask'])
    assert lungs + 15 < mediastinum
    if r['label'] == 0:
      assert r['infection_mask'].any()
    assert not (r['infection_mask'][..., 0].astype(bool) & ~mask).mean() > 0.05
