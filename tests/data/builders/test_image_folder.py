"""image_folder: CSV and class-folder layouts, class discovery, masks, bad labels."""
import logging

import numpy as np
import pytest

from cxr_jax.data import prepare
from cxr_jax.data.splits import PatientOverlapError
from cxr_jax.data.validate import DataValidationError
from cxr_jax.data.schema import class_names


def test_csv_with_patients_masks_and_unlabeled(h, build, tmp_path):
  root = tmp_path / 'mine'
  h.save(root / 'img' / 'a.png', h.chest(48, 40))
  h.save(root / 'img' / 'b.png', h.chest(40, 48), 'RGBA')
  h.save(root / 'img' / 'c.jpg', h.chest(), 'RGB')
  h.save(root / 'img' / 'd.png', h.chest())
  h.save(root / 'masks' / 'a.png', h.lung_mask(48, 40))
  h.write(root / 'labels.csv', 'path,label,patient_id,mask_path\n'
          'img/a.png,pneumonia,p1,masks/a.png\n'
          'img/b.png,normal,p1,\n'
          'img/c.jpg,normal,p2,\n'
          'img/d.png,,p3,\n')
  builder, data = build('image_folder', root)
  assert class_names(builder) == ('normal', 'pneumonia')
  recs = h.by_id([r for rs in data.values() for r in rs])
  assert set(recs) == {'img/a.png', 'img/b.png', 'img/c.jpg', 'img/d.png'}
  assert [int(recs[k]['label']) for k in ('img/a.png', 'img/b.png', 'img/c.jpg')] == [1, 0, 0]
  assert recs['img/d.png']['label'] == -1
  assert [r['id'] for r in data['unlabeled']] == [b'img/d.png']
  split_of = {r['id']: s for s, rs in data.items() for r in rs}
  assert split_of[b'img/a.png'] == split_of[b'img/b.png']  # same patient, same split
  a = recs['img/a.png']
  assert a['has_mask'] and not recs['img/b.png']['has_mask']
  # 48x40 -> 32x27, padded 2 columns left: the mask sits on the dark lungs.
  assert a['mask'][..., 0].sum() > 0 and not a['mask'][:, :2].any()
  img, m = a['image'][..., 0], a['mask'][..., 0].astype(bool)
  assert img[m].mean() < 60 and img[~m & (img > 0)].mean() > 80
  for r in recs.values():
    h.check_orientation(r['image'])
  # Reopening the prepared data (no manual_dir) gives the same classes.
  again = prepare.prepare('image_folder', str(tmp_path / 'tfds'), size=h.SIZE)
  assert class_names(again) == ('normal', 'pneumonia')


def test_class_folders_with_split_folders(h, build, tmp_path):
  root = tmp_path / 'folders'
  for split, n in (('train', 2), ('test', 1)):
    for cls in ('NORMAL', 'COVID'):
      for i in range(n):
        h.save(root / split / cls / f'{cls}-{split}-{i}.png', h.chest(seed=i))
  h.save(root / '__MACOSX' / 'train' / 'NORMAL' / '._x.png', h.chest())
  builder, data = build('image_folder', root)
  assert class_names(builder) == ('COVID', 'NORMAL')
  assert {s: len(r) for s, r in data.items()} == {'train': 4, 'test': 2}
  for s, rs in data.items():
    for r in rs:
      assert r['label'] == (0 if '/COVID/' in r['id'].decode() else 1)


def test_numeric_labels_sorted_numerically(h, build, tmp_path):
  root = tmp_path / 'num'
  rows = []
  for i, label in enumerate(['2', '10', '1']):
    h.save(root / f'{i}.png', h.chest())
    rows.append(f'{i}.png,{label}')
  h.write(root / 'list.csv', 'path,label\n' + '\n'.join(rows) + '\n')
  builder, _ = build('image_folder', root)
  assert class_names(builder) == ('1', '2', '10')


def test_unknown_label_with_given_classes(h, build, tmp_path):
  root = tmp_path / 'bad'
  h.save(root / 'x.png', h.chest())
  h.save(root / 'y.png', h.chest())
  h.write(root / 'labels.csv', 'path,label\nx.png,normal\ny.png,pneumonia\n')
  with pytest.raises(DataValidationError) as err:
    build('image_folder', root, class_names=('normal', 'covid'))
  text = str(err.value)
  assert "unknown label" in text and "value 'pneumonia'" in text
  assert "labels.csv line 3: 'y.png,pneumonia'" in text
  # Unknown labels are never skipped: they mean the wrong classes or builder.
  with pytest.raises(DataValidationError, match="value 'pneumonia'"):
    build('image_folder', root, class_names=('normal', 'covid'), skip_bad_files=True)


def test_bad_header(h, build, tmp_path):
  root = tmp_path / 'hdr'
  h.save(root / 'x.png', h.chest())
  h.write(root / 'labels.csv', 'file,class\nx.png,normal\n')
  with pytest.raises(DataValidationError, match='expected path,label'):
    build('image_folder', root)


def _labelled(h, root, labels):
  for i in range(len(labels)):
    h.save(root / f'{i}.png', h.chest(40, 36, seed=i))
  h.write(root / 'labels.csv', 'path,label\n' +
          ''.join(f'{i}.png,{label}\n' for i, label in enumerate(labels)))
  return root


def test_label_spellings_of_one_class_are_an_error(h, build, tmp_path):
  root = _labelled(h, tmp_path / 'sp', ['normal', 'Normal', 'COVID-19', 'covid_19', 'normal'])
  with pytest.raises(DataValidationError) as err:
    build('image_folder', root)
  text = str(err.value)
  assert text.count('- inconsistent label spelling') == 2
  assert ("'Normal': 1 image(s), e.g. labels.csv line 3: '1.png,Normal'; "
          "'normal': 2 image(s), e.g. labels.csv line 2: '0.png,normal'") in text
  assert "'COVID-19': 1 image(s)" in text and "'covid_19': 1 image(s)" in text
  # Class folders too; with class_names given, another spelling is an unknown label.
  folders = tmp_path / 'folders'
  for cls in ('NORMAL', 'Normal'):
    h.save(folders / cls / f'{cls}.png', h.chest())
  with pytest.raises(DataValidationError, match="'NORMAL': 1 image.*class folder 'NORMAL'"):
    build('image_folder', folders)
  with pytest.raises(DataValidationError, match="value 'Normal'.*did you mean 'NORMAL'"):
    build('image_folder', folders, class_names=('NORMAL', 'covid'))


def test_rare_and_look_alike_classes_are_warned_about(h, build, tmp_path, caplog):
  labels = ['normal'] * 5 + ['covid', 'covid-19']
  root = _labelled(h, tmp_path / 'rare', labels)
  with caplog.at_level(logging.WARNING, logger='cxr_jax'):
    builder, _ = build('image_folder', root)
  assert ("2 class(es) with fewer than 5 labeled images (too few to learn or evaluate; a "
          "typo of another class?): 'covid': 1 (e.g. labels.csv line 7: '5.png,covid'); "
          "'covid-19': 1") in caplog.text
  assert "class names 'covid' and 'covid-19' look like variants of one class" in caplog.text
  assert builder.info.metadata['class_counts'] == {'covid': 1, 'covid-19': 1, 'normal': 5}


def test_a_csv_row_without_its_label_names_file_line_and_field(h, build, tmp_path):
  root = _labelled(h, tmp_path / 'short', ['normal', 'covid'])
  h.write(root / 'labels.csv', 'path,label\n0.png,normal\n1.png\n')
  with pytest.raises(DataValidationError) as err:
    build('image_folder', root)
  assert ("bad row: labels.csv (line 3 has 1 field(s) for the 2 columns of the header; "
          "missing field(s): label) [listed in labels.csv line 3: '1.png']") in str(err.value)


def test_patient_overlap_names_the_option_that_resolves_it(h, build, tmp_path):
  root = tmp_path / 'ov'
  for i in range(4):
    h.save(root / f'{i}.png', h.chest(seed=i))
  h.write(root / 'labels.csv', 'path,label,patient_id,split\n0.png,a,p1,train\n'
          '1.png,b,p1,test\n2.png,a,p2,train\n3.png,b,p3,test\n')
  with pytest.raises(PatientOverlapError, match=r"'p1' in splits \['test', 'train'\]"
                     r"[\s\S]*--option=split=patient"):
    build('image_folder', root)
  _, data = build('image_folder', root, split='patient')
  split_of = {r['id']: s for s, rs in data.items() for r in rs}
  assert len(split_of) == 4 and split_of[b'0.png'] == split_of[b'1.png']
