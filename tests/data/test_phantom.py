"""Tests of the phantom renderer and the `phantom` TFDS builder (tiny sizes, < 30 s)."""
from __future__ import annotations

import functools
import numpy as np
import pytest
import tensorflow_datasets as tfds

from cxr_jax.data.builders import phantom
from cxr_jax.data.builders.phantom import CLASS_NAMES, Phantom, make_config, render

_SIZE = 32
_COUNTS = dict(num_unlabeled=24, num_train=40, num_val=12, num_test=40)


def _build(data_dir, **options) -> dict[str, dict[str, np.ndarray]]:
  """Builds the phantom dataset with `options` under `data_dir`, returns every split as
  a dict of stacked numpy arrays (text fields decoded to str)."""
  builder = Phantom(config=make_config(**options), data_dir=str(data_dir),
                    file_format='array_record')
  builder.download_and_prepare()
  out = {}
  for split, source in builder.as_data_source().items():
    rows = [source[i] for i in range(len(source))]
    out[split] = {k: np.array([r[k].decode() if isinstance(r[k], bytes) else r[k]
                               for r in rows]) for k in rows[0]}
  return out


@pytest.fixture(scope='module')
def confounded(tmp_path_factory):
  """A build whose train/val markers always equal the label (strength 1)."""
  return _build(tmp_path_factory.mktemp('conf1'), size=_SIZE, confounder_strength=1.0,
                **_COUNTS)


@pytest.fixture(scope='module')
def unconfounded(tmp_path_factory):
  """A build with strength 0 and a larger train split, for the independence check."""
  return _build(tmp_path_factory.mktemp('conf0'), size=_SIZE, confounder_strength=0.0,
                num_unlabeled=4, num_train=80, num_val=4, num_test=4)


@functools.cache
def _renders() -> list[tuple[int, int, int, dict]]:
  """Direct renders (size, label, marker, output) over sizes, classes and markers, with
  varied seeds; made once and shared by the renderer tests."""
  out = []
  for size in (16, 32, 64, 96):
    for label in range(len(CLASS_NAMES)):
      for marker in range(-1, 4):
        for seed in range(3):
          rng = np.random.default_rng([size, label, marker + 1, seed])
          out.append((size, label, marker, render(rng, label, size, marker)))
  return out


def _between_lungs(mask: np.ndarray) -> np.ndarray:
  """[S, S] bool: per row, the pixels strictly between the two lungs (mediastinum and
  heart), found from the lung mask alone so it does not reuse the renderer's geometry."""
  s = mask.shape[0]
  out = np.zeros_like(mask, bool)
  for r in range(s):
    cols = np.flatnonzero(mask[r])
    left, right = cols[cols < s // 2], cols[cols >= s // 2]
    if left.size and right.size:
      out[r, left.max() + 1:right.min()] = True
  return out


# ----------------------------------------------------------------------------- renderer


def test_render_shapes_and_dtypes():
  for size, _, _, out in _renders()[::20]:
    for key in ('image', 'mask', 'lesion', 'marker'):
      assert out[key].shape == (size, size, 1) and out[key].dtype == np.uint8, key
    for key in ('mask', 'lesion', 'marker'):
      assert set(np.unique(out[key])) <= {0, 1}, key


def test_render_lesions_inside_lungs_and_by_class():
  for size, label, _, out in _renders():
    lesion, mask = out['lesion'].astype(bool), out['mask'].astype(bool)
    assert not (lesion & ~mask).any(), (size, label)
    if label == phantom.NEGATIVE:
      assert not lesion.any() and out['severity'] == 0.0
    else:
      assert lesion.any(), (size, label)


def test_render_two_lungs_darker_than_mediastinum():
  for size, label, _, out in _renders():
    mask = out['mask'][..., 0].astype(bool)
    # Lungs on both sides of the image's centre line.
    assert mask[:, :size // 2].any() and mask[:, size // 2:].any()
    image = out['image'][..., 0].astype(float)
    between = _between_lungs(mask)
    assert image[mask].mean() < image[between].mean() - 10, (size, label)


def test_render_marker_outside_lungs_in_its_corner():
  for size, _, marker, out in _renders():
    m, mask = out['marker'][..., 0].astype(bool), out['mask'][..., 0].astype(bool)
    assert not (m & mask).any()
    if marker == -1:
      assert not m.any()
      continue
    rows, cols = np.nonzero(m)
    assert rows.size > 0
    top, left = rows.mean() < size / 3, cols.mean() < size / 3
    bottom, right = rows.mean() > 2 * size / 3, cols.mean() > 2 * size / 3
    expected = {0: top and left, 1: top and right, 2: bottom and left, 3: bottom and right}
    assert expected[marker], (size, marker, rows.mean(), cols.mean())
    # Burned in: the marker is among the brightest pixels of the image.
    assert out['image'][..., 0][m].min() >= 0.85 * 255 - 1


def test_render_findings_are_opacities_where_marked():
  # Conspicuous findings must make the marked pixels brighter than the rest of the lung.
  for size, label, _, out in _renders():
    if label == phantom.NEGATIVE or out['severity'] < 0.5 or size < 32:
      continue
    image = out['image'][..., 0].astype(float)
    lesion, mask = out['lesion'][..., 0].astype(bool), out['mask'][..., 0].astype(bool)
    if (mask & ~lesion).sum() < 10:
      continue
    assert image[lesion].mean() > image[mask & ~lesion].mean(), (size, label)


def test_render_class_patterns():
  # typical: both lungs, lateral; indeterminate and atypical: one lung only.
  lateral = {phantom.TYPICAL: [], phantom.INDETERMINATE: []}
  for size, label, _, out in _renders():
    if label == phantom.NEGATIVE:
      continue
    lesion = out['lesion'][..., 0].astype(bool)
    sides = [lesion[:, :size // 2].any(), lesion[:, size // 2:].any()]
    if label == phantom.TYPICAL:
      assert all(sides), size
    else:
      assert sum(sides) == 1, (size, label)
    if label in lateral:
      # Distance of lesion pixels from the centre line, as a fraction of the half width.
      cols = np.nonzero(lesion)[1] + 0.5
      lateral[label].append(np.abs(cols - size / 2).mean() / (size / 2))
  assert np.mean(lateral[phantom.TYPICAL]) > np.mean(lateral[phantom.INDETERMINATE]) + 0.1


def test_render_deterministic_and_validates():
  a = render(np.random.default_rng(7), 1, 32, 2)
  b = render(np.random.default_rng(7), 1, 32, 2)
  c = render(np.random.default_rng(8), 1, 32, 2)
  for key in ('image', 'mask', 'lesion', 'marker'):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])
  with pytest.raises(ValueError, match='label'):
    render(np.random.default_rng(0), 4, 32)
  with pytest.raises(ValueError, match='confounder'):
    render(np.random.default_rng(0), 0, 32, 4)
  with pytest.raises(ValueError, match='size'):
    render(np.random.default_rng(0), 0, 8)


def test_split_labels_quotas():
  rng = np.random.default_rng(0)
  counts = np.bincount(phantom.split_labels(10, (0.5, 0.3, 0.2, 0.0), rng), minlength=4)
  np.testing.assert_array_equal(counts, [5, 3, 2, 0])
  counts = np.bincount(phantom.split_labels(7, (1, 1, 1, 1), rng), minlength=4)
  assert counts.sum() == 7 and counts.min() == 1 and counts.max() == 2


# ----------------------------------------------------------------------------- config


def test_make_config_names_and_errors():
  base = make_config(size=32, num_unlabeled=50)
  assert base.name == make_config(num_unlabeled=50, size=32).name
  assert base.size == 32 and base.num_unlabeled == 50 and base.num_train == 100
  names = {make_config(**o).name for o in (
      {}, dict(size=32), dict(num_unlabeled=10), dict(num_train=10), dict(num_val=10),
      dict(num_test=10), dict(seed=1), dict(confounder_strength=0.5),
      dict(class_probs=(0.4, 0.2, 0.2, 0.2)))}
  assert len(names) == 9  # every option reaches the name, so folders never collide
  with pytest.raises(ValueError, match='bogus'):
    make_config(bogus=1)
  with pytest.raises(ValueError, match='confounder_strength'):
    make_config(confounder_strength=1.5)
  with pytest.raises(ValueError, match='class_probs'):
    make_config(class_probs=(1.0, 0.0))
  with pytest.raises(ValueError, match='num_train'):
    make_config(num_train=0)
  with pytest.raises(ValueError, match='size'):
    make_config(size=8)
  with pytest.raises(ValueError, match='seed'):
    make_config(seed=-1)


def test_follow_ups_share_patient_class_and_findings_and_first_images_stay(tmp_path):
  k = 3
  data = _build(tmp_path, size=_SIZE, num_unlabeled=7, num_train=6, num_val=3, num_test=3,
                confounder_strength=0.5, images_per_patient=k)
  for split, rows in data.items():
    for i in range(len(rows['id'])):
      first = i - i % k  # the patient's first image
      assert rows['patient_id'][i] == f'phantom-{split}-patient{i // k}'
      for field in ('true_label', 'confounder', 'severity'):
        assert rows[field][i] == rows[field][first], (split, i, field)
      if i == first:  # rendered exactly as an image of a one-image patient would be
        rng, label = phantom.example_rng(0, split, i // k), int(rows['true_label'][i])
        assert phantom.example_marker(rng, split, label, 0.5) == rows['confounder'][i]
        out = render(rng, label, _SIZE, int(rows['confounder'][i]))
        np.testing.assert_array_equal(rows['image'][i], out['image'])
      else:  # same anatomy, another position and exposure
        assert not np.array_equal(rows['image'][i], rows['image'][first])
        assert rows['mask'][i].sum() > 0
  assert make_config(images_per_patient=2).name.endswith('_ipp2')
  assert make_config(images_per_patient=1).name == make_config().name
  with pytest.raises(ValueError, match='images_per_patient'):
    make_config(images_per_patient=0)


def test_registered_with_default_config(tmp_path):
  assert tfds.builder_cls('phantom') is Phantom
  builder = Phantom(data_dir=str(tmp_path), file_format='array_record')
  assert builder.builder_config.name == 'default'
  assert builder.builder_config.size == 64 and builder.builder_config.num_unlabeled == 2000
  assert Phantom.CLASS_NAMES == CLASS_NAMES


# ----------------------------------------------------------------------------- builder


def test_split_sizes_labels_and_fields(confounded):
  sizes = {s: _COUNTS[f'num_{s}'] for s in phantom.SPLITS}
  assert {s: len(d['id']) for s, d in confounded.items()} == sizes
  for split, d in confounded.items():
    assert d['image'].shape == (sizes[split], _SIZE, _SIZE, 1)
    assert d['has_mask'].all()
    assert set(d['true_label']) <= set(range(len(CLASS_NAMES)))
    assert list(d['id']) == [f'phantom-{split}-{i}' for i in range(sizes[split])]
    np.testing.assert_array_equal(d['patient_id'], d['id'])
    if split == 'unlabeled':
      assert (d['label'] == -1).all()
    else:
      np.testing.assert_array_equal(d['label'], d['true_label'])
  # Uniform class_probs give exact quotas in the labeled splits.
  np.testing.assert_array_equal(np.bincount(confounded['train']['label']), [10] * 4)
  np.testing.assert_array_equal(np.bincount(confounded['test']['label']), [10] * 4)


def test_stored_masks(confounded):
  for split, d in confounded.items():
    lesion, mask = d['lesion'].astype(bool), d['mask'].astype(bool)
    assert not (lesion & ~mask).any(), split
    has_lesion = lesion.reshape(len(lesion), -1).any(axis=1)
    np.testing.assert_array_equal(has_lesion, d['true_label'] != phantom.NEGATIVE)


def test_splits_disjoint(confounded):
  ids = [set(d['patient_id']) for d in confounded.values()]
  assert sum(map(len, ids)) == len(set().union(*ids))
  images = {d.tobytes() for split in confounded.values() for d in split['image']}
  assert len(images) == sum(len(d['image']) for d in confounded.values())


def test_confounder_follows_label_in_train_and_val_only(confounded):
  for split in ('train', 'val'):
    np.testing.assert_array_equal(confounded[split]['confounder'],
                                  confounded[split]['true_label'])
  for split in ('test', 'unlabeled'):
    d = confounded[split]
    # Independent marker: agrees with the label ~1/5 of the time (none or 0..3).
    assert (d['confounder'] == d['true_label']).mean() < 0.5, split
    assert len(set(d['confounder'])) >= 3, split
  # The stored value is the one burned into the image: bright pixels at that corner.
  q = _SIZE // 4
  corners = {0: (slice(0, q), slice(0, q)), 1: (slice(0, q), slice(-q, None)),
             2: (slice(-q, None), slice(0, q)), 3: (slice(-q, None), slice(-q, None))}
  for d in confounded.values():
    for image, c in zip(d['image'], d['confounder']):
      if c >= 0:
        assert image[corners[c]].max() >= 0.85 * 255 - 1


def test_confounder_independent_at_strength_zero(unconfounded):
  d = unconfounded['train']
  agree = (d['confounder'] == d['true_label']).mean()
  assert agree < 0.4, agree  # expected 1/5
  for label in range(len(CLASS_NAMES)):
    assert len(set(d['confounder'][d['true_label'] == label])) >= 3


def test_build_deterministic_and_seeded(tmp_path):
  small = dict(size=16, num_unlabeled=3, num_train=4, num_val=2, num_test=3,
               confounder_strength=0.5)
  a = _build(tmp_path / 'a', **small)
  b = _build(tmp_path / 'b', **small)
  c = _build(tmp_path / 'c', seed=1, **small)
  for split in phantom.SPLITS:
    for key in a[split]:
      np.testing.assert_array_equal(a[split][key], b[split][key], err_msg=key)
    assert not np.array_equal(a[split]['image'], c[split]['image'])


def test_findings_option_adds_independent_visible_findings(confounded, tmp_path):
  # the default build has no targets; findings=True keeps everything else of each image
  # (own random stream) and draws the findings it records
  assert 'targets' not in confounded['train']
  with_findings = _build(tmp_path, size=_SIZE, confounder_strength=1.0, findings=True,
                         **_COUNTS)
  assert make_config(findings=True).name.endswith('_findings')
  with pytest.raises(ValueError, match='findings must be True or False'):
    make_config(findings='yes')
  targets = []
  for split in phantom.SPLITS:
    plain, got = confounded[split], with_findings[split]
    for field in ('label', 'true_label', 'confounder', 'mask', 'lesion', 'severity'):
      np.testing.assert_array_equal(got[field], plain[field])
    t = got['targets']
    assert t.shape == (len(plain['label']), len(phantom.FINDINGS)) and t.dtype == np.float32
    np.testing.assert_array_equal(t[:, 0], plain['true_label'] != phantom.NEGATIVE)
    drawn = t[:, 1:].any(axis=1)
    changed = (got['image'] != plain['image']).reshape(len(t), -1).any(axis=1)
    np.testing.assert_array_equal(changed, drawn)  # drawn exactly where recorded
    targets.append(t)
  rate = np.concatenate(targets)[:, 1:].mean(axis=0)
  assert np.all(np.abs(rate - phantom.FINDING_PREVALENCE) < 0.15), rate
