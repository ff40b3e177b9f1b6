"""A prepared dataset is returned only for the source files and options it was built from."""
import json
import logging
import os
import shutil
import types

import pytest

from cxr_jax.cli import prepare as prepare_cli
from cxr_jax.data import identity, image_cache, pipeline, prepare
from cxr_jax.data.builders import _common, image_folder
from cxr_jax.data.identity import DataIdentityError


def _csv_folder(h, root, labels=('normal', 'covid', 'normal', 'covid')):
  rows = []
  for i, label in enumerate(labels):
    h.save(root / f'{i}.png', h.chest(40, 36, seed=i))
    rows.append(f'{i}.png,{label}')
  h.write(root / 'labels.csv', 'path,label\n' + '\n'.join(rows) + '\n')
  return root


def _prepare(data_dir, root, **options):
  return prepare.prepare('image_folder', str(data_dir), manual_dir=str(root) if root else None,
                         size=16, workers=1, **options)


def _ids(builder):
  return sorted(r['id'].decode() for src in builder.as_data_source().values()
                for r in (src[i] for i in range(len(src))))


def test_identity_is_recorded(h, tmp_path):
  root = _csv_folder(h, tmp_path / 'a')
  builder = _prepare(tmp_path / 'tfds', root)
  ident = builder.info.metadata['identity']
  assert ident['source'] == str(root.resolve())
  assert ident['num_files'] == 5 and len(ident['fingerprint']) == 64
  assert ident['builder'] == 'image_folder' and ident['version'] == '1.1.0'
  assert ident['options']['size'] == 16 and ident['options']['csv'] == ''
  assert ident['config'] == builder.builder_config.name
  assert os.path.exists(os.path.join(builder.data_dir, identity.SOURCE_LIST))


def test_another_source_is_refused_naming_both(h, tmp_path, capsys):
  a = _csv_folder(h, tmp_path / 'a')
  b = _csv_folder(h, tmp_path / 'b', labels=('normal', 'covid', 'covid', 'covid'))
  data_dir = tmp_path / 'tfds'
  first = _ids(_prepare(data_dir, a))
  with pytest.raises(DataIdentityError) as err:
    _prepare(data_dir, b)
  text = str(err.value)
  assert str(a.resolve()) in text and str(b.resolve()) in text
  assert 'another folder' in text and 'new data_dir' in text and 'delete' in text
  # The training pipeline opens data through the same check.
  spec = types.SimpleNamespace(name='image_folder', options='size=16', manual_dir=str(b))
  with pytest.raises(DataIdentityError, match='another folder'):
    pipeline.get_builder(spec, str(data_dir))
  # The command line prints the message, exit status 1.
  rc = prepare_cli.main(['--dataset=image_folder', f'--manual_dir={b}', f'--data_dir={data_dir}',
                     '--size=16', '--workers=1'])
  assert rc == 1 and str(b.resolve()) in capsys.readouterr().err
  # Without a manual_dir the prepared data is read as it is.
  assert _ids(_prepare(data_dir, None)) == first


def test_a_changed_source_is_refused_naming_the_file(h, tmp_path):
  root = _csv_folder(h, tmp_path / 'a')
  data_dir = tmp_path / 'tfds'
  _prepare(data_dir, root)
  csv = root / 'labels.csv'
  stat, text = csv.stat(), csv.read_text()
  csv.write_text(text.replace('3.png,covid', '3.png,normal'))
  os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  with pytest.raises(DataIdentityError) as err:
    _prepare(data_dir, root)
  message = str(err.value)
  assert 'the same folder, changed since' in message and '\n' not in message
  assert '1 file(s) with another size or modification time (labels.csv)' in message
  csv.write_text(text)
  os.utime(csv, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  _prepare(data_dir, root)  # as prepared again
  # files the builder does not read (an image no CSV row lists, notes) change nothing
  h.save(root / 'extra.png', h.chest())
  h.write(root / 'notes.txt', 'downloaded on Monday')
  _prepare(data_dir, root)
  # an image it reads does
  h.save(root / '2.png', h.chest(40, 36, seed=99))
  with pytest.raises(DataIdentityError,
                     match=r'1 file\(s\) with another size or modification time \(2.png\)'):
    _prepare(data_dir, root)
  (root / '2.png').unlink()
  with pytest.raises(DataIdentityError, match=r'1 file\(s\) only in the prepared source \(2.png\)'):
    _prepare(data_dir, root)


def test_prepared_data_notes_and_runs_inside_the_raw_folder_are_not_part_of_it(h, tmp_path):
  """Class folders, prepared into RAW/tfds1 and RAW/tfds2 (both inside the raw folder),
  with notes and a run's folder beside the images: RAW/tfds1 still opens."""
  raw = tmp_path / 'raw'
  for i in range(8):
    h.save(raw / ('normal' if i % 2 else 'covid') / f'{i}.png', h.chest(40, 36, seed=i))
  first = _ids(_prepare(raw / 'tfds1', raw))
  _prepare(raw / 'tfds2', raw)
  h.write(raw / 'notes.txt', 'from the hospital archive')
  h.write(raw / 'runs' / 'study' / 'config.json', '{}')
  h.write(raw / 'runs' / 'study' / 'metrics.jsonl', '{"step": 1}\n')
  assert _ids(_prepare(raw / 'tfds1', raw)) == first
  ident = _prepare(raw / 'tfds2', raw).info.metadata['identity']
  assert ident['num_files'] == 8 and ident['files'] == identity.BUILDER_INPUTS
  h.save(raw / 'covid' / '0.png', h.chest(40, 36, seed=50))  # a changed image is refused
  with pytest.raises(DataIdentityError, match=r'\(covid/0.png\)'):
    _prepare(raw / 'tfds1', raw)


def test_a_copy_with_the_same_files_is_accepted(h, tmp_path):
  root = _csv_folder(h, tmp_path / 'a')
  data_dir = tmp_path / 'tfds'
  first = _ids(_prepare(data_dir, root))
  copy = shutil.copytree(root, tmp_path / 'moved')  # copy2 keeps sizes and mtimes
  (copy / '.DS_Store').write_text('hidden files are not part of the source')
  assert _ids(_prepare(data_dir, copy)) == first


def test_a_data_dir_inside_the_source_is_not_part_of_it(h, tmp_path):
  root = _csv_folder(h, tmp_path / 'a')
  builder = _prepare(root / 'tfds', root)
  assert builder.info.metadata['identity']['num_files'] == 5
  image_cache.for_split(pipeline.get_source(builder, 'train'))  # writes into root/tfds
  _prepare(root / 'tfds', root)  # opens


def test_options_that_print_alike_get_their_own_folders(h, tmp_path):
  names = {_common.config_with(image_folder.ImageFolder, **o).name for o in (
      dict(class_names=('COVID-19', 'normal')), dict(class_names=('COVID19', 'normal')),
      dict(csv='a/b.csv'), dict(csv='ab.csv'), dict(split_seed=1), dict(split_seed='1'))}
  assert len(names) == 6
  assert all(n.startswith(('default_class_names-COVID19normal_', 'default_csv-ab.csv_',
                           'default_split_seed-1_')) for n in names)
  assert _common.config_with(image_folder.ImageFolder, size=256).name == 'default'
  # Prepared with one spelling, the other is not served from its folder.
  root = _csv_folder(h, tmp_path / 'a', labels=('COVID-19', 'normal') * 2)
  _prepare(tmp_path / 'tfds', root, class_names=('COVID-19', 'normal'))
  with pytest.raises(ValueError, match="unknown label.*value 'COVID-19'"):
    _prepare(tmp_path / 'tfds', root, class_names=('COVID19', 'normal'))


def test_other_recorded_options_or_no_record(h, tmp_path, caplog):
  root = _csv_folder(h, tmp_path / 'a')
  builder = _prepare(tmp_path / 'tfds', root)
  path = os.path.join(builder.data_dir, 'metadata.json')
  meta = json.load(open(path))
  meta['identity']['options']['split_seed'] = 7
  json.dump(meta, open(path, 'w'))
  with pytest.raises(DataIdentityError, match="options .*'split_seed': 7"):
    _prepare(tmp_path / 'tfds', None)
  # Prepared before identities were recorded: opens, with a warning that it is unchecked.
  del meta['identity']
  json.dump(meta, open(path, 'w'))
  with caplog.at_level(logging.WARNING, logger='cxr_jax'):
    _prepare(tmp_path / 'tfds', root)
  assert 'cannot be checked' in caplog.text


def test_a_record_of_the_whole_folder_opens_while_the_files_read_are_unchanged(h, tmp_path):
  """Datasets prepared when the fingerprint covered every file under manual_dir (no
  `files` entry): opened when every file the builder reads is in the old list unchanged."""
  import gzip
  root = _csv_folder(h, tmp_path / 'a')
  h.write(root / 'notes.txt', 'was part of the old fingerprint')
  builder = _prepare(tmp_path / 'tfds', root)
  path = os.path.join(builder.data_dir, 'metadata.json')
  meta = json.load(open(path))
  old_files = identity.list_source(str(root))  # what such a record listed
  assert 'notes.txt' in old_files
  del meta['identity']['files']
  meta['identity'].update(fingerprint=identity.fingerprint(old_files),
                          num_files=len(old_files))
  json.dump(meta, open(path, 'w'))
  with gzip.open(os.path.join(builder.data_dir, identity.SOURCE_LIST), 'wt') as f:
    f.writelines(f'{rel}\t{size}\t{mtime}\n' for rel, (size, mtime) in old_files.items())
  (root / 'notes.txt').unlink()  # not read by the builder: opens
  _prepare(tmp_path / 'tfds', root)
  h.save(root / '1.png', h.chest(40, 36, seed=77))  # read by it: refused
  with pytest.raises(DataIdentityError, match=r'another size or modification time \(1.png\)'):
    _prepare(tmp_path / 'tfds', root)
