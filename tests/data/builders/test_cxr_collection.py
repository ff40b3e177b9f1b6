"""cxr_collection: ieee8023 metadata.csv, its variants, the cropped-mask segmentation set."""
import csv
import os
from collections import Counter

import numpy as np
import pytest

from cxr_jax.data.builders import cxr_collection

HEADER = ('patientid,offset,sex,age,finding,survival,intubated,intubation_present,went_icu,'
          'in_icu,needed_supplemental_O2,extubated,temperature,pO2_saturation,'
          'leukocyte_count,neutrophil_count,lymphocyte_count,view,modality,date,location,'
          'folder,filename,doi,url,license,clinical_notes,other_notes,')


def _row(pid, finding, view, filename, modality='X-ray', folder='images'):
  fields = [pid, '0', 'M', '65', finding] + [''] * 12 + [
      view, modality, '"January 22, 2020"', '"Cho Ray Hospital, Vietnam"', folder, filename,
      '', '', 'CC BY', '"notes, with a comma"', '', '']
  return ','.join(fields)


def test_finding_labels():
  f = cxr_collection.finding_label
  assert [f('COVID-19'), f('Pneumonia/Viral/COVID-19'), f('COVID-19, ARDS')] == [1, 1, 1]
  assert [f('No Finding'), f('No finding')] == [0, 0]
  assert [f('Pneumonia/Bacterial/Streptococcus'), f('SARS'), f('ARDS')] == [2, 2, 2]
  assert [f(''), f('todo'), f('Unknown')] == [-1, -1, -1]


def test_ieee8023_layout(h, build, tmp_path):
  root = tmp_path / 'covid-chestxray-dataset'
  rows = [
      _row('1', 'COVID-19', 'PA', 'a.jpeg'),
      _row('1', 'Pneumonia/Viral/COVID-19', 'AP Supine', 'b.png'),
      _row('2', 'No Finding', 'PA', 'c.png'),
      _row('3', 'Pneumonia/Bacterial/Streptococcus', 'L', 'd.jpg'),
      _row('4', '', 'PA', 'e.png'),  # blank finding: unlabeled
      _row('5', 'todo', 'AP', 'f.png'),  # not yet labelled: unlabeled
      _row('6', 'COVID-19', 'Axial', 'ct.nii.gz', modality='CT', folder='volumes'),
  ]
  h.write(root / 'metadata.csv', HEADER + '\n' + '\n'.join(rows) + '\n')
  h.save(root / 'images' / 'a.jpeg', h.chest(60, 50), 'RGB')
  h.save(root / 'images' / 'b.png', h.chest(50, 60), 'RGBA')  # RGBA PNG
  h.save(root / 'images' / 'c.png', h.chest().astype(np.uint16) * 257)  # 16-bit PNG
  h.save(root / 'images' / 'd.jpg', h.chest())
  h.save(root / 'images' / 'e.png', h.chest())
  h.save(root / 'images' / 'f.png', h.chest())
  builder, data = build('cxr_collection', tmp_path)  # a parent of the clone works too
  labeled = [r for s in ('train', 'val', 'test') for r in data.get(s, [])]
  got = {r['id'].decode().split('/')[-1]: (int(r['label']), r['view'].decode())
         for r in labeled}
  assert got == {'a.jpeg': (1, 'PA'), 'b.png': (1, 'AP Supine'), 'c.png': (0, 'PA'),
                 'd.jpg': (2, 'L')}
  assert sorted(r['id'].decode() for r in data['unlabeled']) == [
      'covid-chestxray-dataset/images/e.png', 'covid-chestxray-dataset/images/f.png']
  assert all(r['label'] == -1 for r in data['unlabeled'])
  for r in labeled + data['unlabeled']:
    assert not r['has_mask'] and not r['mask'].any() and not r['has_structures']
    h.check_orientation(r['image'])
  # Patient 1's two images stay together.
  split_of = {r['id'].decode().split('/')[-1]: s for s, rs in data.items() for r in rs}
  assert split_of['a.jpeg'] == split_of['b.png']
  # The 16-bit PNG keeps its gray levels (v * 257 / 65535 == v / 255).
  c = [r for r in labeled if r['id'].endswith(b'c.png')][0]
  assert c['image'].max() >= 250
  assert builder.info.metadata['class_names'] == ['No Finding', 'COVID-19', 'Other']


def test_frontal_only_and_variants(h, build, tmp_path):
  # Actualmed: the image column is `imagename`; Figure1: only `patientid`.
  actualmed = tmp_path / 'actualmed'
  h.write(actualmed / 'metadata.csv', 'patientid,offset,sex,age,finding,view,modality,'
          'imagename\nA1,,F,50,COVID-19,PA,X-ray,x1.png\nA2,,M,40,No finding,L,X-ray,'
          'x2.png\n')
  h.save(actualmed / 'images' / 'x1.png', h.chest())
  h.save(actualmed / 'images' / 'x2.png', h.chest())
  _, data = build('cxr_collection', actualmed, frontal_only=True)
  ids = [r['id'].decode() for rs in data.values() for r in rs]
  assert ids == ['images/x1.png']
  figure1 = tmp_path / 'figure1'
  h.write(figure1 / 'metadata.csv', 'patientid,finding,view,modality\nCOVID-00003b,'
          'COVID-19,PA,X-ray\nCOVID-00012,Pneumonia,AP,X-ray\n')
  h.save(figure1 / 'images' / 'COVID-00003b.jpg', h.chest())
  h.save(figure1 / 'images' / 'COVID-00012.png', h.chest())
  _, data = build('cxr_collection', figure1)
  got = {r['id'].decode(): int(r['label']) for rs in data.values() for r in rs}
  assert got == {'images/COVID-00003b.jpg': 1, 'images/COVID-00012.png': 2}


def test_missing_image_names_csv_row(h, build, tmp_path):
  root = tmp_path / 'c'
  h.write(root / 'metadata.csv', HEADER + '\n' + _row('9', 'COVID-19', 'PA', 'gone.png') +
          '\n')
  with pytest.raises(ValueError) as err:
    build('cxr_collection', root)
  text = str(err.value)
  assert 'missing file: images/gone.png' in text and 'metadata.csv line 2' in text


def _structure_row(n, name, kind, w, h_, top, left, mw, mh, mask):
  return [str(n), '', f'COVID-19 {kind}', kind, '', name, f'images/{n}.jpg',
          f'tags/{mask}' if mask else '', f'masks/{mask}' if mask else '', f'{w}x{h_}', str(top), str(left), str(mw),
          str(mh), '', 'undefined', str(top), str(left), str(mw), str(mh), '']


def test_segmentation_set_pastes_cropped_masks(h, build, tmp_path):
  root = tmp_path / 'seg'
  h.write(root / 'metadata.csv', HEADER + '\n' + _row('7', 'COVID-19', 'PA', 's1.jpg') +
          '\n' + _row('8', 'SARS', 'PA', 'other.jpg') + '\n')
  # A 64 (wide) x 48 image; right lung crop 10x30 at (left 8, top 6), left lung 12x30 at
  # (left 44, top 8); masks are RGBA crops, colour on opaque black.
  img = np.full((48, 64), 100, np.uint8)
  h.save(root / 'images' / 's1.jpg', img)
  h.save(root / 'images' / 'other.jpg', img)  # listed in metadata, not in structure.csv

  def crop(hh, ww):
    m = np.zeros((hh, ww, 4), np.uint8)
    m[..., 3] = 255
    m[..., 0] = 187
    return m

  h.save(root / 'masks' / 'r.png', crop(30, 10))
  h.save(root / 'masks' / 'l.png', crop(30, 12))
  h.save(root / 'masks' / 'g.png', crop(5, 5))
  h.save(root / 'masks' / 't.png', crop(48, 2))
  header = ['#', 'Taxonomy', 'Class', 'Template Name', 'File Folder', 'Filename', 'Image',
            'Tag', 'Mask', 'Resolution', 'Top', 'Left', 'Width', 'Height', 'Points',
            'Text Annotation', 'Minimal Top', 'Minimal Left', 'Minimal Width',
            'Minimal Height', 'Attributes']
  rows = [_structure_row(1, 's1.jpg', 'Right Lung', 64, 48, 6, 8, 10, 30, 'r.png'),
          _structure_row(2, 's1.jpg', 'Left Lung', 64, 48, 8, 44, 12, 30, 'l.png'),
          _structure_row(3, 's1.jpg', 'Ground Glass Opacities', 64, 48, 20, 10, 5, 5,
                         'g.png'),
          _structure_row(4, 's1.jpg', 'Endotracheal Tube', 64, 48, 0, 31, 2, 48, 't.png'),
          _structure_row(5, 's1.jpg', 'Monitoring Probes', 64, 48, 0, 0, 64, 48, '')]
  (root / 'structure.csv').parent.mkdir(parents=True, exist_ok=True)
  with open(root / 'structure.csv', 'w', newline='') as f:
    csv.writer(f, quoting=csv.QUOTE_MINIMAL).writerows([header] + rows)
  _, data = build('cxr_collection', root, size=64)
  records = [r for rs in data.values() for r in rs]
  assert [r['id'].decode() for r in records] == ['images/s1.jpg']
  r = records[0]
  assert r['has_mask'] and r['has_structures'] and r['label'] == 1
  mask = r['mask'][..., 0]
  # 64x48 at S=64: no scaling, 8 rows of padding on top.
  expected = np.zeros((64, 64), np.uint8)
  expected[8 + 6:8 + 36, 8:18] = 1
  expected[8 + 8:8 + 38, 44:56] = 1
  np.testing.assert_array_equal(mask, expected)
  assert r['opacity_mask'][8 + 20:8 + 25, 10:15].all() and r['opacity_mask'].sum() == 25
  assert r['device_mask'][8:56, 31:33].all() and r['device_mask'].sum() == 96


def test_real_segmentation_subset(h, build, tmp_path):
  real = h.real_or_skip('covid19_segmentations')
  # The 8 smallest images (decoding all 100, up to 2828 px, takes a minute here): a
  # filtered structure.csv beside links to the real files.
  with open(real / 'structure.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  pixels = {r['Filename']: np.prod([int(v) for v in r['Resolution'].split('x')])
            for r in rows}
  keep = set(sorted(pixels, key=lambda n: (pixels[n], n))[:8])
  root = tmp_path / 'seg'
  root.mkdir()
  for name in ('images', 'masks', 'metadata.csv'):
    os.symlink(real / name, root / name)
  with open(root / 'structure.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(r for r in rows if r['Filename'] in keep)
  _, data = build('cxr_collection', root, size=96)
  records = [r for rs in data.values() for r in rs]
  assert len(records) == 8
  lungs_per_image = Counter(r['Filename'] for r in rows
                            if r['Filename'] in keep and r['Template Name'].endswith('Lung'))
  for r in records:
    name = r['id'].decode().split('/')[-1]
    assert r['has_structures'] and r['label'] >= 0
    assert r['has_mask'] == (lungs_per_image[name] > 0)
    mask = r['mask'][..., 0].astype(bool)
    assert 0.1 < mask.mean() < 0.7, name
    lungs, mediastinum = h.lungs_and_mediastinum(r['image'], r['mask'])
    assert lungs < mediastinum, name  # pasted at the right place, not inverted
