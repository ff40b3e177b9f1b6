"""The Grain pipeline: determinism, epochs, sharding of batches, iterator save/restore."""
import json

import numpy as np
import pytest

from configs import common
from cxr_jax.data import image_cache, pipeline
from tests.conftest import TINY_PHANTOM


@pytest.fixture(scope='module')
def source(tiny_data_dir):
  builder = pipeline.get_builder(common.data('phantom', 'unlabeled', TINY_PHANTOM), tiny_data_dir)
  return pipeline.get_source(builder, 'unlabeled')


def _ids(batches):
  return [tuple(b['id'].tolist()) for b in batches]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_same_seed_same_order_and_other_seed_differs(source):
  a = _take(iter(pipeline.make_loader(source, batch_size=8, seed=3, fields=('image', 'id'))), 4)
  b = _take(iter(pipeline.make_loader(source, batch_size=8, seed=3, fields=('image', 'id'))), 4)
  c = _take(iter(pipeline.make_loader(source, batch_size=8, seed=4, fields=('image', 'id'))), 4)
  assert _ids(a) == _ids(b)
  assert _ids(a) != _ids(c)
  assert a[0]['image'].shape == (8, 32, 32, 1) and a[0]['image'].dtype == np.uint8


def test_each_epoch_is_a_permutation_and_epochs_differ(source):
  n = len(source)  # 64 = 8 batches of 8
  batches = _take(iter(pipeline.make_loader(source, batch_size=8, seed=0, fields=('id',))), 16)
  first = [i for b in batches[:8] for i in b['id'].tolist()]
  second = [i for b in batches[8:] for i in b['id'].tolist()]
  assert len(set(first)) == n and set(first) == set(second)
  assert first != second


def test_iterator_state_restores_the_same_continuation(source):
  loader = pipeline.make_loader(source, batch_size=8, seed=1, fields=('id',))
  it = iter(loader)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 5)  # crosses the epoch boundary
  resumed = iter(pipeline.make_loader(source, batch_size=8, seed=1, fields=('id',)))
  resumed.set_state(state)
  assert _ids(_take(resumed, 5)) == _ids(expected)


def test_a_position_saved_with_workers_resumes_with_any_worker_count():
  # config.worker_count=-1 picks the count from the host's cores: a run resumed on
  # another host must continue the same stream of batches
  from absl import flags
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (launch.py parses them)
    flags.FLAGS.mark_as_parsed()
  records = [{'image': np.full((2, 2, 1), i, np.uint8)} for i in range(24)]
  ids = lambda batches: [b['image'][:, 0, 0, 0].tolist() for b in batches]
  loader = lambda workers: pipeline.make_loader(records, batch_size=4, seed=2,
                                                worker_count=workers)
  uninterrupted = ids(_take(iter(loader(0)), 12))  # crosses epoch boundaries
  first = iter(loader(0))
  _take(first, 4)
  state = first.get_state()
  assert json.loads(state) == {'next_index': 4}
  with_worker = iter(loader(1))  # one worker process (each costs seconds to start)
  with_worker.set_state(state)
  assert ids(_take(with_worker, 6)) == uninterrupted[4:10]
  without = iter(loader(0))
  without.set_state(with_worker.get_state())
  assert ids(_take(without, 2)) == uninterrupted[10:]
  with pytest.raises(ValueError, match='not a loader position'):
    without.set_state({'next_index_in_cycle': 1})


def test_subset_and_read_all(source):
  sub = pipeline.Subset(source, [5, 2, 9])
  assert len(sub) == 3 and sub[1]['id'] == source[2]['id']
  everything = pipeline.read_all(source, ('id',), batch_size=10)
  assert [source[i]['id'] for i in range(len(source))] == everything['id'].tolist()


def test_missing_split_and_unknown_dataset_are_named(tiny_data_dir):
  builder = pipeline.get_builder(common.data('phantom', 'train', TINY_PHANTOM), tiny_data_dir)
  with pytest.raises(ValueError, match=r"no split 'trian'.*\['test', 'train', 'unlabeled', 'val'\]"):
    pipeline.get_source(builder, 'trian', key='config.pretrain.stages[0].data.split')
  with pytest.raises(ValueError, match="no dataset builder named 'phantomm'"):
    pipeline.get_builder(common.data('phantomm'), tiny_data_dir, key='config.finetune.data')


def test_parse_options():
  assert pipeline.parse_options('size=64, seed=3,name=abc,p=(0.5,0.5)') == {
      'size': 64, 'seed': 3, 'name': 'abc', 'p': (0.5, 0.5)}
  with pytest.raises(ValueError, match='key=value'):
    pipeline.parse_options('size64')


def test_readers_decode_only_their_fields_with_the_same_values(source):
  images_only = source.decoding(('image',))
  full, lean = source[3], images_only[3]
  np.testing.assert_array_equal(lean['image'], full['image'])
  # the lung mask is stored zlib-compressed: left undecoded it is the compressed bytes
  assert full['mask'].shape == full['image'].shape
  assert isinstance(lean['mask'], bytes) and len(lean['mask']) < full['mask'].size
  sub = pipeline.Subset(source, [7, 1]).decoding(('image', 'label'))
  assert sub[1]['label'] == full_label(source, 1)
  with pytest.raises(ValueError, match=r"no field\(s\) \['lable'\]"):
    source.decoding(('lable',))
  batch = next(iter(pipeline.make_loader(source, batch_size=4, seed=0,
                                         fields=('image', 'mask'), shuffle=False)))
  np.testing.assert_array_equal(batch['mask'][3], full['mask'])


def full_label(source, i):
  return int(source[i]['label'])


def test_image_cache_holds_the_same_images_and_is_reused(source):
  import os
  cache = image_cache.for_split(source)
  assert len(cache) == len(source)
  for i in (0, 17, len(source) - 1):
    np.testing.assert_array_equal(cache[i]['image'], source[i]['image'])
  assert cache[0]['image'].dtype == np.uint8
  stamp = os.stat(cache.path).st_mtime_ns
  again = image_cache.for_split(source)
  assert again.path == cache.path and os.stat(again.path).st_mtime_ns == stamp
  with pytest.raises(ValueError, match=r"not \['label'\]"):
    cache.decoding(('image', 'label'))
  # with columns read once (fine-tuning's labels): records carry them, in index order
  ids = pipeline.read_all(source, ('id',))['id']
  with_ids = cache.with_columns(id=ids)
  for i in (0, 17, len(source) - 1):
    assert with_ids[i]['id'] == source[i]['id']
  batch = next(iter(pipeline.make_loader(with_ids, batch_size=8, seed=5, fields=('image', 'id'))))
  for image, i in zip(batch['image'], batch['id']):
    np.testing.assert_array_equal(image, source[int(np.flatnonzero(ids == i)[0])]['image'])
  with pytest.raises(ValueError, match="column 'id' has 3 values"):
    cache.with_columns(id=ids[:3])
  # the loader over the cache yields what the loader over the records yields
  a = next(iter(pipeline.make_loader(cache, batch_size=8, seed=5)))
  b = next(iter(pipeline.make_loader(source, batch_size=8, seed=5)))
  np.testing.assert_array_equal(a['image'], b['image'])


def test_a_stale_image_cache_is_refused(source, tmp_path):
  cache = image_cache.for_split(source)
  from array_record.python.array_record_module import ArrayRecordWriter
  bad = tmp_path / 'bad.array_record'
  writer = ArrayRecordWriter(str(bad), 'group_size:1,uncompressed')
  writer.write(np.zeros((32, 32, 1), np.uint8).tobytes())
  writer.close()
  import shutil
  shutil.copy(bad, cache.path)
  try:
    with pytest.raises(ValueError, match='holds 1 images for the 64 examples'):
      image_cache.for_split(source)
  finally:
    import os
    os.remove(cache.path)


class _ReadOnlyWriter:
  """ArrayRecordWriter on a read-only folder: created fine, fails on its first write."""

  def __init__(self, path, options):
    del options
    open(path, 'wb').close()  # a partial file, to check that it is removed

  def write(self, data):
    raise PermissionError(13, 'Permission denied')

  def close(self):
    pass


def test_image_cache_on_a_read_only_dataset_falls_back_to_the_records(
    tiny_data_dir, tmp_path, monkeypatch, caplog):
  import logging
  import os
  import shutil
  data_dir = shutil.copytree(tiny_data_dir, tmp_path / 'tfds',
                             ignore=shutil.ignore_patterns('*.image-cache.*'))
  builder = pipeline.get_builder(common.data('phantom', 'unlabeled', TINY_PHANTOM), data_dir)
  source = pipeline.get_source(builder, 'unlabeled')
  folder = os.fspath(builder.data_dir)
  if os.geteuid() == 0:  # root writes through chmod: make the writer fail instead
    from array_record.python import array_record_module
    monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', _ReadOnlyWriter)
  else:
    os.chmod(folder, 0o555)
  try:
    with caplog.at_level(logging.WARNING, logger='cxr_jax'):
      assert image_cache.for_split(source) is None
  finally:
    os.chmod(folder, 0o755)
  assert 'image cache: cannot write' in caplog.text and 'reading the TFDS records' in caplog.text
  assert not [f for f in os.listdir(folder) if 'image-cache' in f]
  # what training then reads: the TFDS records
  batch = next(iter(pipeline.make_loader(source, batch_size=8, seed=5)))
  assert batch['image'].shape == (8, 32, 32, 1)


def _patient_loader(patients, seed=0, batch_size=4):
  """A loader of in-memory records whose image holds its own index, paired by patient."""
  source = [{'image': np.full((2, 2, 1), i, np.uint8)} for i in range(len(patients))]
  pairs = pipeline.PatientPositives(source, patients, seed=seed)
  return pipeline.make_loader(pipeline.WithIndex(source), batch_size=batch_size, seed=seed,
                              fields=('image', 'index'), map_with_index=pairs), source


def test_patient_positives_never_cross_patients_and_vary_between_epochs():
  patients = np.array(['a', 'b', 'a', 'c', 'b', 'a', 'd', 'c'])  # d has one image
  loader, _ = _patient_loader(patients)
  it = iter(loader)
  partners = {i: set() for i in range(len(patients))}
  for _ in range(40):  # 20 epochs of 8 images
    batch = next(it)
    assert set(batch) == {'image', 'image2'}
    for first, second in zip(batch['image'][:, 0, 0, 0], batch['image2'][:, 0, 0, 0]):
      assert patients[first] == patients[second]
      assert first != second or first == 6  # another image whenever the patient has one
      partners[int(first)].add(int(second))
  assert partners[0] == {2, 5} and partners[2] == {0, 5} and partners[6] == {6}
  assert partners[1] == {4} and partners[3] == {7}


def test_patient_positives_with_one_image_per_patient_are_the_images_themselves():
  patients = np.array([f'p{i}' for i in range(8)])
  loader, source = _patient_loader(patients, seed=3)
  plain = pipeline.make_loader(source, batch_size=4, seed=3, fields=('image',))
  for paired, today in zip(_take(iter(loader), 6), _take(iter(plain), 6)):
    np.testing.assert_array_equal(paired['image'], today['image'])  # same order, bit for bit
    np.testing.assert_array_equal(paired['image2'], today['image'])
