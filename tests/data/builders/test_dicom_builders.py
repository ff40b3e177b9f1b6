"""siim_covid19 and rsna_pneumonia on pydicom-made fixtures in the competition layouts."""
import json

import numpy as np
import pytest

pytest.importorskip('pydicom')

from cxr_jax.data.validate import DataValidationError  # noqa: E402
from tests import dicom_files  # noqa: E402


def _stored(h, hi, invert=False, seed=0):
  """The chest fixture as stored DICOM values up to `hi` (inverted for MONOCHROME1)."""
  x = h.chest(48, 40, seed=seed).astype(np.float64) / 255.0
  if invert:
    x = 1.0 - x
  return np.round(x * hi).astype(np.uint16)


def _siim(h, root):
  studies = {  # study -> (series, image, class column, boxes literal, photometric)
      '00086460a852': ('ff0879eb20ed', '65761e66de9f', 1,
                       "[{'x': 789.28836, 'y': 582.43035, 'width': 1026.65662, "
                       "'height': 1917.30292}, {'x': 2245.91208, 'y': 591.20528, "
                       "'width': 1094.66162, 'height': 1761.54944}]", 'MONOCHROME1'),
      '000c9c05fd14': ('e555410bd2cd', '51759b5579bc', 0, '', 'MONOCHROME2'),
      '00292f8c37bd': ('2dc7cc5bd1f6', '0e8ba5a31fd9', 2, '', 'MONOCHROME2'),
      '005057b3f880': ('e34afce999c5', '3dcdfc352a06', 3,
                       "[{'x': 10.0, 'y': 20.0, 'width': 30.0, 'height': 40.0}]",
                       'MONOCHROME1'),
  }
  study_rows, image_rows = [], []
  for i, (study, (series, image, cls, boxes, photo)) in enumerate(studies.items()):
    onehot = ['0'] * 4
    onehot[cls] = '1'
    study_rows.append(f'{study}_study,' + ','.join(onehot))
    label = ('none 1 0 0 1 1' if not boxes else
             ' '.join(f'opacity 1 {b} {b} {b} {b}' for b in range(boxes.count('x'))))
    box_field = f'"{boxes}"' if boxes else ''
    image_rows.append(f'{image}_image,{box_field},{label},{study}')
    path = root / 'train' / study / series / f'{image}.dcm'
    if photo == 'MONOCHROME1':
      # 12-bit MONOCHROME1 with a VOI LUT to 8-bit output, as winning solutions handle.
      lut = np.round(255 * (np.arange(4096) / 4095.0)).astype(np.uint16)
      dicom_files.make_dicom(path, _stored(h, 4095, invert=True, seed=i), photometric=photo,
                       bits_stored=12, voi_lut=lut, voi_lut_bits=8)
    else:
      dicom_files.make_dicom(path, _stored(h, 1023, seed=i), bits_stored=10, window=(512, 1024))
  h.write(root / 'train_study_level.csv', 'id,Negative for Pneumonia,Typical Appearance,'
          'Indeterminate Appearance,Atypical Appearance\n' + '\n'.join(study_rows) + '\n')
  h.write(root / 'train_image_level.csv', 'id,boxes,label,StudyInstanceUID\n' +
          '\n'.join(image_rows) + '\n')
  dicom_files.make_dicom(root / 'test' / '00188a671292' / '3eb5a506ccf8' / '1d7e4c4b4b7b.dcm',
                   _stored(h, 255).astype(np.uint8))
  return root


def test_siim_layout(h, build, tmp_path):
  root = _siim(h, tmp_path / 'siim')
  builder, data = build('siim_covid19', root)
  labeled = h.by_id([r for s in ('train', 'val', 'test') for r in data.get(s, [])])
  assert len(labeled) == 4 and len(data['unlabeled']) == 1
  r = labeled['train/00086460a852/ff0879eb20ed/65761e66de9f.dcm']
  assert r['label'] == 1 and r['num_boxes'] == 2
  boxes = json.loads(r['boxes'])
  assert boxes[0] == pytest.approx([789.28836, 582.43035, 1026.65662, 1917.30292])
  assert r['patient_id'] == b'00086460a852' and r['study_id'] == b'00086460a852'
  labels = {k.split('/')[1]: int(v['label']) for k, v in labeled.items()}
  assert labels == {'00086460a852': 1, '000c9c05fd14': 0, '00292f8c37bd': 2,
                    '005057b3f880': 3}
  for r in list(labeled.values()) + data['unlabeled']:
    # MONOCHROME1 inverted, VOI LUT / window applied: lungs dark, marker bright.
    h.check_orientation(r['image'])
  assert data['unlabeled'][0]['label'] == -1
  assert builder.CLASS_NAMES == ('negative', 'typical', 'indeterminate', 'atypical')


def test_siim_truncated_dicom_and_bad_study_row(h, build, tmp_path):
  root = _siim(h, tmp_path / 'siim')
  path = root / 'train' / '000c9c05fd14' / 'e555410bd2cd' / '51759b5579bc.dcm'
  path.write_bytes(path.read_bytes()[:-1500])
  csv = root / 'train_study_level.csv'
  csv.write_text(csv.read_text().replace('00292f8c37bd_study,0,0,1,0',
                                         '00292f8c37bd_study,0,1,1,0'))
  with pytest.raises(DataValidationError) as err:
    build('siim_covid19', root)
  text = str(err.value)
  assert 'truncated DICOM' in text and '51759b5579bc.dcm' in text
  assert "train_study_level.csv line 4: '00292f8c37bd_study,0,1,1,0'" in text
  assert 'unknown label' in text and "exactly one 1" in text


def test_rsna_layout(h, build, tmp_path):
  root = tmp_path / 'rsna'
  pids = ['0004cfab-14fd-4e49-80ba-63a80b6bddd6', '00313ee0-9eaa-42f4-b0ab-c148ed3241cd',
          '00436515-870c-4b36-a041-de91049b9ab4']
  h.write(root / 'stage_2_detailed_class_info.csv', 'patientId,class\n'
          f'{pids[0]},No Lung Opacity / Not Normal\n{pids[1]},Normal\n'
          f'{pids[2]},Lung Opacity\n{pids[2]},Lung Opacity\n')
  h.write(root / 'stage_2_train_labels.csv', 'patientId,x,y,width,height,Target\n'
          f'{pids[0]},,,,,0\n{pids[1]},,,,,0\n{pids[2]},264.0,152.0,213.0,379.0,1\n'
          f'{pids[2]},562.0,152.0,256.0,453.0,1\n')
  for i, pid in enumerate(pids):
    dicom_files.make_dicom(root / 'stage_2_train_images' / f'{pid}.dcm',
                     _stored(h, 255, seed=i).astype(np.uint8),
                     extra={'PatientID': pid, 'ViewPosition': 'PA'})
  dicom_files.make_dicom(root / 'stage_2_test_images' / 'test-1.dcm',
                   _stored(h, 255).astype(np.uint8))
  _, data = build('rsna_pneumonia', root)
  recs = h.by_id([r for s in ('train', 'val', 'test') for r in data.get(s, [])])
  got = {k.split('/')[-1][:8]: (int(r['label']), int(r['num_boxes'])) for k, r in recs.items()}
  assert got == {'0004cfab': (1, 0), '00313ee0': (0, 0), '00436515': (2, 2)}
  r = recs[f'stage_2_train_images/{pids[2]}.dcm']
  assert json.loads(r['boxes']) == [[264.0, 152.0, 213.0, 379.0], [562.0, 152.0, 256.0, 453.0]]
  assert len(data['unlabeled']) == 1
  for r in recs.values():
    h.check_orientation(r['image'])
  # 8-bit DICOM scaled by 2**8 - 1: stored values come back (up to resize rounding).
  assert r['image'].max() >= 250


def test_real_nih_dicom_through_image_folder(h, build, tmp_path):
  real = h.real_or_skip('dicom', 'nhsx_nih_cxr.dcm')
  root = tmp_path / 'one'
  root.mkdir()
  (root / 'x.dcm').symlink_to(real)
  h.write(root / 'labels.csv', 'path,label,patient_id\nx.dcm,No Finding,Covid0000\n')
  _, data = build('image_folder', root, size=64)
  r = [r for rs in data.values() for r in rs][0]
  img = r['image'][..., 0].astype(float)
  assert r['label'] == 0 and img.shape == (64, 64)
  # Not inverted: the mediastinum column is brighter than the lung fields.
  assert img[20:44, 28:36].mean() > img[20:44, 10:20].mean() + 20
