"""Every builder's input files (`CxrBuilder.input_files`, what the data identity
fingerprints) are exactly what it reads: its items' images and masks and the label files
it parses; files it does not read (notes, a run's folder) never change them."""
import builtins
import io
import os

import pytest

from cxr_jax.data import prepare
from tests.data.builders.test_covid_qu_ex import _make as covid_qu_ex_layout
from tests.data.builders.test_cxr_collection import HEADER as IEEE_HEADER, _row as ieee_row
from tests.data.builders.test_multilabel_builders import NIH_V2020, _chexpert, _nih

BYTES = b'not decoded: input_files lists files, it reads no pixels'


def _touch(root, *names):
  for name in names:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(BYTES)


def _image_folder(h, root):
  _touch(root, 'a.png', 'b.png', 'unlisted.png')
  h.write(root / 'labels.csv', 'path,label\na.png,x\nb.png,y\n')
  return {'labels.csv'}


def _covid19_radiography(h, root):
  _touch(root, 'COVID/images/COVID-1.png', 'COVID/masks/COVID-1.png',
         'Normal/images/Normal-1.png', 'Normal/masks/Normal-1.png')
  return set()


def _covid_qu_ex(h, root):
  covid_qu_ex_layout(h, root)  # images, lung masks and infection masks
  return set()


def _kermany(h, root):
  _touch(root, 'chest_xray/train/NORMAL/IM-0115-0001.jpeg',
         'chest_xray/test/PNEUMONIA/person1_virus_6.jpeg')
  return set()


def _nih_cxr14(h, root):
  _nih(h, root, 'Data_Entry_2017_v2020.csv', NIH_V2020)
  h.write(root / 'train_val_list.txt', '00000001_000.png\n')
  h.write(root / 'test_list.txt', '00000003_000.png\n')
  return {'Data_Entry_2017_v2020.csv', 'train_val_list.txt', 'test_list.txt'}


def _chexpert_cxr(h, root):
  _chexpert(h, root)
  return {'CheXpert-v1.0-small/train.csv', 'CheXpert-v1.0-small/valid.csv'}


def _covidx(h, root):
  h.write(root / 'train.txt', '1 a.png positive cohen\n')
  h.write(root / 'test.txt', '2 b.png negative rsna\n')
  _touch(root, 'train/a.png', 'test/b.png')
  return {'train.txt', 'val.txt', 'test.txt'}  # val.txt absent: one that appears counts


def _rsna(h, root):
  h.write(root / 'stage_2_detailed_class_info.csv', 'patientId,class\np1,Normal\n')
  h.write(root / 'stage_2_train_labels.csv', 'patientId,x,y,width,height,Target\np1,,,,,0\n')
  _touch(root, 'stage_2_train_images/p1.dcm', 'stage_2_test_images/t1.dcm')
  return {'stage_2_detailed_class_info.csv', 'stage_2_train_labels.csv'}


def _siim(h, root):
  h.write(root / 'train_study_level.csv', 'id,Negative for Pneumonia,Typical Appearance,'
          'Indeterminate Appearance,Atypical Appearance\ns1_study,0,1,0,0\n')
  h.write(root / 'train_image_level.csv', 'id,boxes,label,StudyInstanceUID\n'
          'i1_image,,none 1 0 0 1 1,s1\n')
  _touch(root, 'train/s1/r1/i1.dcm', 'test/s2/r2/i2.dcm')
  return {'train_study_level.csv', 'train_image_level.csv'}


def _cxr_collection(h, root):
  h.write(root / 'metadata.csv', IEEE_HEADER + '\n' + ieee_row('1', 'COVID-19', 'PA', 'a.png')
          + '\n' + ieee_row('2', '', 'PA', 'b.png') + '\n')
  _touch(root, 'images/a.png', 'images/b.png')
  return {'metadata.csv', 'structure.csv'}  # no structure.csv: one that appears counts


LAYOUTS = {'image_folder': _image_folder, 'covid19_radiography': _covid19_radiography,
           'covid_qu_ex': _covid_qu_ex, 'kermany_pneumonia': _kermany,
           'nih_cxr14': _nih_cxr14, 'chexpert_cxr': _chexpert_cxr, 'covidx': _covidx,
           'rsna_pneumonia': _rsna, 'siim_covid19': _siim, 'cxr_collection': _cxr_collection}


def test_every_builder_has_a_layout_here():
  assert sorted(LAYOUTS) == sorted(n for n in prepare.dataset_names() if n != 'phantom')


@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_input_files_are_what_the_builder_reads(name, h, tmp_path, monkeypatch):
  root = tmp_path / 'raw'
  label_files = LAYOUTS[name](h, root)
  rel = lambda path: os.path.relpath(os.path.realpath(path), os.path.realpath(root))
  config = "infection" if name == "covid_qu_ex" else None  # the layout's subset
  builder = prepare.make_builder(name, str(tmp_path / 'tfds'), config=config)
  opened, real_open = [], io.open

  def recording_open(file, *args, **kwargs):  # every file opened while listing
    if isinstance(file, (str, os.PathLike)):
      opened.append(rel(file))
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr(io, 'open', recording_open)
  monkeypatch.setattr(builtins, 'open', recording_open)
  items, files = builder.input_files(root)
  monkeypatch.undo()
  files = {rel(f) for f in files}
  item_files = {rel(f) for item in items for f in item.files()}
  assert items and item_files <= files
  assert files - item_files == label_files
  assert set(opened) <= files, f'read but not fingerprinted: {set(opened) - files}'
  h.write(root / 'notes.txt', 'downloaded on Monday')
  h.write(root / 'runs' / 'study' / 'config.json', '{}')
  assert {rel(f) for f in builder.input_files(root)[1]} == files
