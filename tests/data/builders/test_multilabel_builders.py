"""nih_cxr14 (both CSV variants), chexpert_cxr (policies, prefixes, views), covidx."""
import math

import numpy as np
import pytest

from cxr_jax.data.builders import chexpert_cxr, nih_cxr14
from cxr_jax.data.validate import DataValidationError

NIH_V2020 = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,'
             'View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n'
             '00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n'
             '00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143\n'
             '00000002_000.png,No Finding,0,2,80,M,PA,2500,2048,0.171,0.171\n'
             '00000003_000.png,Hernia,0,3,74,F,AP,2500,2048,0.168,0.168\n'
             '00000004_000.png,Pleural_Thickening|Mass,0,4,82,M,AP,2500,2048,0.168,0.168\n')
NIH_OLD = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,'
           'View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n'
           '00000001_000.png,Cardiomegaly,000,00000001,057Y,M,PA,2682,2749,0.143,0.143,\n'
           '00000002_000.png,No Finding,000,00000002,080Y,M,PA,2500,2048,0.171,0.171,\n')


def _nih(h, root, csv_name, text, kaggle=True):
  h.write(root / csv_name, text)
  names = [line.split(',')[0] for line in text.splitlines()[1:]]
  for i, name in enumerate(names):
    folder = root / f'images_00{1 + i % 2}' / 'images' if kaggle else root / 'images'
    h.save(folder / name, h.chest(64, 64, seed=i), 'RGBA' if i == 1 else None)
  return names


def test_nih_v2020_with_official_split(h, build, tmp_path):
  root = tmp_path / 'nih'
  _nih(h, root, 'Data_Entry_2017_v2020.csv', NIH_V2020)
  h.write(root / 'train_val_list.txt', '00000001_000.png\n00000001_001.png\n'
          '00000002_000.png\n00000004_000.png\n')
  h.write(root / 'test_list.txt', '00000003_000.png\n')
  builder, data = build('nih_cxr14', root)
  assert len(data['test']) == 1 and data['test'][0]['id'].endswith(b'00000003_000.png')
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert len(recs) == 5
  r = recs['images_002/images/00000001_001.png']
  f = nih_cxr14.FINDINGS
  expected = np.zeros(14, np.float32)
  expected[[f.index('Cardiomegaly'), f.index('Emphysema')]] = 1
  np.testing.assert_array_equal(r['targets'], expected)
  assert (r['label'], r['patient_id'], r['view']) == (1, b'1', b'PA')
  r = recs['images_001/images/00000002_000.png']
  assert r['label'] == 0 and not r['targets'].any()
  r = recs['images_001/images/00000004_000.png']
  assert r['targets'][f.index('Pleural_Thickening')] == 1 and r['targets'][f.index('Mass')]
  # Patient 1's images share a split.
  split_of = {r['id']: s for s, rs in data.items() for r in rs}
  assert split_of[b'images_001/images/00000001_000.png'] == \
      split_of[b'images_002/images/00000001_001.png']
  for r in recs.values():
    h.check_orientation(r['image'])


def test_nih_old_csv_and_unknown_finding(h, build, tmp_path):
  root = tmp_path / 'old'
  _nih(h, root, 'Data_Entry_2017.csv', NIH_OLD, kaggle=False)
  _, data = build('nih_cxr14', root)
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert {r['patient_id'] for r in recs.values()} == {b'1', b'2'}
  bad = tmp_path / 'bad'
  _nih(h, bad, 'Data_Entry_2017.csv', NIH_OLD.replace('Cardiomegaly', 'Infiltrate'),
       kaggle=False)
  with pytest.raises(DataValidationError) as err:
    build('nih_cxr14', bad)
  assert "value 'Infiltrate'" in str(err.value)
  assert "Data_Entry_2017.csv line 2: '00000001_000.png,Infiltrate," in str(err.value)


CHEX_HEADER = ('Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,'
               'Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,'
               'Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,'
               'Support Devices')


def _chexpert(h, parent):
  root = parent / 'CheXpert-v1.0-small'
  p = 'CheXpert-v1.0-small'
  train = [
      f'{p}/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0',
      f'{p}/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,',
      f'{p}/train/patient00002/study2/view2_lateral.jpg,Female,87,Lateral,,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,',
      f'{p}/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,AP,,,,,,1.0,,,,0.0,,,,',
      f'{p}/train/patient00004/study1/view1_frontal.jpg,Female,20,Frontal,PA,,,,,,,-1.0,,,,,,,',
  ]
  valid = [f'{p}/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,'
           '1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0']
  h.write(root / 'train.csv', CHEX_HEADER + '\n' + '\n'.join(train) + '\n')
  h.write(root / 'valid.csv', CHEX_HEADER + '\n' + '\n'.join(valid) + '\n')
  for i, line in enumerate(train + valid):
    h.save(parent / line.split(',')[0], h.chest(64, 56, seed=i))
  return root


def test_chexpert_policies(h, build, tmp_path):
  _chexpert(h, tmp_path)
  o = chexpert_cxr.OBSERVATIONS
  builder, data = build('chexpert_cxr', tmp_path)  # default: U-ignore, blank zeros
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert len(recs) == 6 and len(data['test']) == 1
  key = 'CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg'
  t = recs[key]['targets']
  assert math.isnan(t[o.index('Cardiomegaly')]) and t[o.index('Lung Opacity')] == 1.0
  assert t[o.index('No Finding')] == 0.0  # blank -> 0
  assert t[o.index('Fracture')] == 1.0 and recs[key]['label'] == 1
  r = recs['CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg']
  assert r['label'] == 0 and r['view'] == b'AP' and r['patient_id'] == b'patient00001'
  # All-uncertain study: no class for single-label use.
  assert recs['CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg'][
      'label'] == -1
  assert recs['CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg'][
      'frontal_lateral'] == b'Frontal'
  for r in recs.values():
    h.check_orientation(r['image'])
  # U-Ones and U-Zeros; pointing at the dataset folder itself works too.
  _, ones = build('chexpert_cxr', tmp_path / 'CheXpert-v1.0-small', config='ones')
  t = h.by_id([r for rs in ones.values() for r in rs])['train/patient00002/study2/view1_frontal.jpg'][
      'targets']
  assert t[o.index('Cardiomegaly')] == 1.0 and t[o.index('Edema')] == 1.0
  _, zeros = build('chexpert_cxr', tmp_path, config='zeros', frontal_only=True,
                   blank='ignore')
  recs = h.by_id([r for rs in zeros.values() for r in rs])
  assert len(recs) == 5 and not any('lateral' in k for k in recs)
  t = recs[key]['targets']
  assert t[o.index('Cardiomegaly')] == 0.0 and math.isnan(t[o.index('No Finding')])


def test_chexpert_unlabeled_and_bad_value(h, build, tmp_path):
  root = _chexpert(h, tmp_path)
  _, data = build('chexpert_cxr', tmp_path, config='unlabeled')
  assert list(data) == ['unlabeled'] and len(data['unlabeled']) == 6
  assert all(r['label'] == -1 for r in data['unlabeled'])
  (root / 'valid.csv').write_text((root / 'valid.csv').read_text().replace(
      'AP,0.0,1.0', 'AP,2.0,1.0'))
  with pytest.raises(DataValidationError) as err:
    build('chexpert_cxr', tmp_path)
  assert "unknown label: column 'No Finding' (value '2.0'" in str(err.value)
  assert 'valid.csv line 2' in str(err.value)


def test_chexpert_short_row_and_header_name_file_line_and_fields(h, build, tmp_path):
  # A row cut short would otherwise read its missing observations as blank (0).
  root = _chexpert(h, tmp_path)
  line = (root / 'valid.csv').read_text().splitlines()[1]
  (root / 'valid.csv').write_text(CHEX_HEADER + '\n' + line.rsplit(',', 3)[0] + '\n')
  with pytest.raises(DataValidationError) as err:
    build('chexpert_cxr', tmp_path)
  assert ('bad row: CheXpert-v1.0-small/valid.csv (line 2 has 16 field(s) for the 19 '
          'columns of the header; missing field(s): Pleural Other, Fracture, Support '
          "Devices) [listed in valid.csv line 2: 'CheXpert-v1.0-small/valid/") in str(err.value)
  (root / 'valid.csv').write_text(CHEX_HEADER.replace(',Fracture', '') + '\n' + line + '\n')
  with pytest.raises(DataValidationError, match=r'bad CSV header: .*valid.csv .*missing '
                     'Fracture; expected Path,No Finding,'):
    build('chexpert_cxr', tmp_path)


def test_covidx(h, build, tmp_path):
  root = tmp_path / 'covidx'
  h.write(root / 'train.txt', '1 a.png positive cohen\n2 b b.png negative rsna\n'
          '2 c.jpg negative rsna\n')
  h.write(root / 'val.txt', '3 d.png positive sirm\n')
  h.write(root / 'test.txt', '4 e.png negative ricord\n')
  for name, split in (('a.png', 'train'), ('b b.png', 'train'), ('c.jpg', 'train'),
                      ('d.png', 'train'), ('e.png', 'test')):
    h.save(root / split / name, h.chest())
  builder, data = build('covidx', root)
  assert {s: len(r) for s, r in data.items()} == {'train': 3, 'val': 1, 'test': 1}
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert recs['train/b b.png']['label'] == 0 and recs['train/a.png']['label'] == 1
  assert recs['train/d.png']['source'] == b'sirm'  # val.txt image kept under train/
  assert builder.CLASS_NAMES == ('negative', 'positive')
  old = tmp_path / 'old'
  h.write(old / 'train.txt', '1 a.png COVID-19\n2 b.png pneumonia src\n')
  h.write(old / 'test.txt', '3 c.png normal\n')
  for name, split in (('a.png', 'train'), ('b.png', 'train'), ('c.png', 'test')):
    h.save(old / split / name, h.chest())
  with pytest.raises(DataValidationError, match="use config='three_class'"):
    build('covidx', old)
  builder, data = build('covidx', old, config='three_class')
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert [int(recs[k]['label']) for k in ('train/a.png', 'train/b.png', 'test/c.png')] == [2, 1, 0]
