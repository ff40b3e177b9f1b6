"""kermany_pneumonia (nested zip copy, __MACOSX, subtypes) and covid19_radiography."""
import logging

import numpy as np
import pytest

from cxr_jax.data.builders import kermany_pneumonia


def test_kermany_names():
  p = kermany_pneumonia.parse_name
  assert p('person1649_bacteria_4379') == ('person1649', 'bacteria')
  assert p('person1149_virus_1924') == ('person1149', 'virus')
  assert p('person447_virus_921_1') == ('person447', 'virus')
  assert p('IM-0115-0001') == ('IM-0115', '')
  assert p('NORMAL2-IM-1442-0001') == ('NORMAL2-IM-1442', '')


def _kermany(h, root):
  files = {
      'train/NORMAL': ['IM-0115-0001.jpeg', 'NORMAL2-IM-1442-0001.jpeg'],
      'train/PNEUMONIA': ['person1649_bacteria_4379.jpeg', 'person1649_bacteria_4380.jpeg',
                          'person1149_virus_1924.jpeg'],
      'val/NORMAL': ['NORMAL2-IM-1427-0001.jpeg'],
      'val/PNEUMONIA': ['person1946_bacteria_4874.jpeg'],
      'test/NORMAL': ['IM-0001-0001.jpeg'],
      'test/PNEUMONIA': ['person100_bacteria_475.jpeg', 'person1_virus_6.jpeg'],
  }
  for i, (folder, names) in enumerate(files.items()):
    for j, name in enumerate(names):
      img = h.chest(50, 60, seed=i * 10 + j)
      h.save(root / 'chest_xray' / folder / name, img, 'RGB' if j == 1 else None)
      # The zip's nested copy and macOS resource forks must not be read.
      h.save(root / 'chest_xray' / 'chest_xray' / folder / name, img)
      h.write(root / '__MACOSX' / 'chest_xray' / folder / f'._{name}', 'junk')
  return root


def test_kermany_layout(h, build, tmp_path):
  root = _kermany(h, tmp_path / 'k')
  builder, data = build('kermany_pneumonia', root)
  assert {s: len(r) for s, r in data.items()} == {'train': 5, 'val': 2, 'test': 3}
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert all(k.startswith('chest_xray/') and '/chest_xray/chest_xray/' not in f'/{k}'
             for k in recs)
  r = recs['chest_xray/train/PNEUMONIA/person1649_bacteria_4379.jpeg']
  assert (r['label'], r['subtype'], r['subtype_label']) == (1, b'bacteria', 1)
  assert r['patient_id'] == b'person1649'
  r = recs['chest_xray/test/PNEUMONIA/person1_virus_6.jpeg']
  assert (r['label'], r['subtype'], r['subtype_label']) == (1, b'virus', 2)
  r = recs['chest_xray/train/NORMAL/NORMAL2-IM-1442-0001.jpeg']
  assert (r['label'], r['subtype'], r['patient_id']) == (0, b'normal', b'NORMAL2-IM-1442')
  for r in recs.values():
    h.check_orientation(r['image'])
    assert not r['has_mask']
  assert builder.CLASS_NAMES == ('NORMAL', 'PNEUMONIA')


# File names of the Kaggle release: person numbers reused across train/ and test/
# (person100), a second image with a `_1` suffix (person447), both NORMAL name forms.
REAL_NAMES = {
    'train/NORMAL': ['IM-0115-0001.jpeg', 'NORMAL2-IM-1427-0001.jpeg'],
    'train/PNEUMONIA': ['person100_virus_184.jpeg', 'person447_virus_921_1.jpeg',
                        'person447_virus_920.jpeg', 'person1649_bacteria_4379.jpeg'],
    'val/NORMAL': ['NORMAL2-IM-1431-0001.jpeg'],
    'val/PNEUMONIA': ['person1946_bacteria_4874.jpeg'],
    'test/NORMAL': ['IM-0001-0001.jpeg'],
    'test/PNEUMONIA': ['person100_bacteria_475.jpeg', 'person1_virus_6.jpeg'],
}


def test_kermany_real_names_official_split_keeps_the_folders(h, build, tmp_path, caplog):
  root = tmp_path / 'k'
  for i, (folder, names) in enumerate(REAL_NAMES.items()):
    for j, name in enumerate(names):
      h.save(root / 'chest_xray' / folder / name, h.chest(40, 36, seed=i * 10 + j))
  with caplog.at_level(logging.WARNING, logger='cxr_jax'):
    builder, data = build('kermany_pneumonia', root)
  assert {s: len(r) for s, r in data.items()} == {'train': 6, 'val': 2, 'test': 3}
  assert ('1 patient id(s) from the file names (person numbers) occur in more than one of '
          'the official' in caplog.text
          and 'person100' in caplog.text and '--option=split=patient' in caplog.text)
  reused = builder.info.metadata['reused_patient_ids']
  assert reused['count'] == 1 and reused['examples']['person100'] == {
      'test': 'chest_xray/test/PNEUMONIA/person100_bacteria_475.jpeg',
      'train': 'chest_xray/train/PNEUMONIA/person100_virus_184.jpeg'}
  assert 'reused_patient_ids' in builder.info.description
  recs = h.by_id([r for rs in data.values() for r in rs])
  r = recs['chest_xray/train/PNEUMONIA/person447_virus_921_1.jpeg']
  assert (r['patient_id'], r['subtype'], r['subtype_label']) == (b'person447', b'virus', 2)
  assert recs['chest_xray/val/NORMAL/NORMAL2-IM-1431-0001.jpeg']['patient_id'] == (
      b'NORMAL2-IM-1431')
  # split=patient: every image re-split by person number; none crosses splits.
  _, data = build('kermany_pneumonia', root, split='patient')
  assert sum(map(len, data.values())) == 11
  split_of = {}
  for s, rs in data.items():
    for r in rs:
      assert split_of.setdefault(r['patient_id'], s) == s, r['patient_id']


CLASSES = ('COVID', 'Lung_Opacity', 'Normal', 'Viral Pneumonia')


def test_covid19_radiography_layout(h, build, tmp_path):
  base = tmp_path / 'dl' / 'COVID-19_Radiography_Dataset' / 'COVID-19_Radiography_Dataset'
  for c, cls in enumerate(CLASSES):
    for i in range(1, 4):
      name = f'{cls}-{i}.png'
      # 299x299 images (some RGB), 256x256 3-channel 0/255 masks.
      h.save(base / cls / 'images' / name, h.chest(299, 299, seed=c * 10 + i),
             'RGB' if i == 2 else None)
      h.save(base / cls / 'masks' / name, h.lung_mask(256, 256), 'RGB')
  h.write(base / 'COVID.metadata.xlsx', 'not read')
  builder, data = build('covid19_radiography', tmp_path / 'dl')
  records = [r for rs in data.values() for r in rs]
  assert len(records) == 12 and set(data) <= {'train', 'val', 'test'}
  for r in records:
    cls = r['id'].decode().split('/')[2]
    assert r['label'] == CLASSES.index(cls)
    assert r['has_mask']
    h.check_orientation(r['image'])
    # The 256 mask, resized to the 299 image, lies on the dark lungs.
    img, m = r['image'][..., 0], r['mask'][..., 0].astype(bool)
    expected = h.lung_mask(h.SIZE, h.SIZE) > 0
    assert (m == expected).mean() > 0.95
    assert img[m].mean() < 70 < img[~m].mean()


def test_covid19_radiography_unknown_class_folder(h, build, tmp_path):
  base = tmp_path / 'COVID-19_Radiography_Dataset'
  h.save(base / 'COVID' / 'images' / 'COVID-1.png', h.chest())
  h.save(base / 'COVID' / 'masks' / 'COVID-1.png', h.lung_mask())
  h.save(base / 'Tuberculosis' / 'images' / 'TB-1.png', h.chest())
  with pytest.raises(ValueError, match="unknown label.*'Tuberculosis'"):
    build('covid19_radiography', tmp_path)


def test_covid19_radiography_some_classes_only(h, build, tmp_path, caplog):
  """A download of some class folders is read (absent ones named in a warning); a class
  with masks/ but no images/ is an error naming that folder; a folder without images
  (prepared data, a run) beside the classes is not a class."""
  base = tmp_path / 'dl' / 'COVID-19_Radiography_Dataset'
  for i in range(1, 4):
    h.save(base / 'Viral Pneumonia' / 'images' / f'Viral Pneumonia-{i}.png', h.chest(seed=i))
    h.save(base / 'Viral Pneumonia' / 'masks' / f'Viral Pneumonia-{i}.png', h.lung_mask())
  h.write(base / 'runs' / 'study' / 'config.json', '{}')
  with caplog.at_level(logging.WARNING, logger='cxr_jax'):
    builder, data = build('covid19_radiography', tmp_path / 'dl')
  records = [r for rs in data.values() for r in rs]
  assert len(records) == 3 and all(r['label'] == CLASSES.index('Viral Pneumonia') and
                                   r['has_mask'] for r in records)
  assert builder.info.metadata['class_names'] == list(CLASSES)
  assert ("has no class folder 'COVID', 'Lung_Opacity', 'Normal'; reading the classes "
          'present') in caplog.text
  h.save(base / 'Normal' / 'masks' / 'Normal-1.png', h.lung_mask())
  with pytest.raises(ValueError, match=r"missing folder: .*Normal/images \(the images of "
                                       r"class 'Normal' \(its masks/ folder is there\)\)"):
    build('covid19_radiography', tmp_path / 'dl')
