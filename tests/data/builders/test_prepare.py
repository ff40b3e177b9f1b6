"""The prepare CLI and library entry point: options, reuse, worker processes, errors."""
import re

import numpy as np
import pytest

from cxr_jax.cli import prepare as prepare_cli
from cxr_jax.data import prepare


def _folder(h, root, n_per_class):
  for cls in ('a', 'b'):
    for i in range(n_per_class):
      h.save(root / cls / f'{cls}{i}.png', h.chest(40, 36, seed=i))
  return root


def test_cli_prepares_and_reports(h, tmp_path, capsys):
  root = _folder(h, tmp_path / 'imgs', 3)
  rc = prepare_cli.main(['--dataset=image_folder', f'--manual_dir={root}',
                     f'--data_dir={tmp_path / "tfds"}', '--size=16', '--workers=1',
                     '--option=split_seed=3'])
  out = capsys.readouterr().out
  assert rc == 0
  assert re.search(r'image_folder/default_size-16_split_seed-3_[0-9a-f]{8} ready', out)
  builder = prepare.prepare('image_folder', str(tmp_path / 'tfds'), size=16, split_seed=3)
  total = sum(s.num_examples for s in builder.info.splits.values())
  assert total == 6 and f'examples' in out


def test_cli_bad_input_exit_code_and_message(h, tmp_path, capsys):
  root = tmp_path / 'x'
  h.save(root / 'ok.png', h.chest())
  h.write(root / 'labels.csv', 'path,label\nok.png,a\nmissing.png,b\n')
  rc = prepare_cli.main(['--dataset=image_folder', f'--manual_dir={root}',
                     f'--data_dir={tmp_path / "tfds"}', '--workers=1'])
  err = capsys.readouterr().err
  assert rc == 1
  assert 'error: image_folder: 1 problem(s)' in err
  assert "missing file: missing.png [listed in labels.csv line 3: 'missing.png,b']" in err


def test_unknown_dataset_option_and_unprepared(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'nope'.*covid_qu_ex"):
    prepare.prepare('nope', str(tmp_path))
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\]"):
    prepare.prepare('covid_qu_ex', str(tmp_path), colour=True)
  with pytest.raises(ValueError, match="manual_dir is empty and dataset 'covid_qu_ex'.* not prepared"):
    prepare.prepare('covid_qu_ex', str(tmp_path))


def test_worker_processes_give_the_same_records(h, tmp_path):
  from cxr_jax.data.builders import _common
  n = _common.MIN_ITEMS_FOR_POOL // 2 + 1  # per class: enough to use the pool
  root = _folder(h, tmp_path / 'many', n)
  one = prepare.prepare('image_folder', str(tmp_path / 'a'), manual_dir=str(root), size=16,
                        workers=1)
  two = prepare.prepare('image_folder', str(tmp_path / 'b'), manual_dir=str(root), size=16,
                        workers=2)
  for split in one.info.splits:
    s1, s2 = one.as_data_source()[split], two.as_data_source()[split]
    assert len(s1) == len(s2) > 0
    for i in range(len(s1)):
      assert s1[i]['id'] == s2[i]['id']
      np.testing.assert_array_equal(s1[i]['image'], s2[i]['image'])


def test_decode_failure_during_writing_leaves_no_dataset(h, tmp_path):
  # A truncated JPEG passes the header check and fails only while being decoded, after
  # TFDS has started writing: the whole preparation must still come to nothing.
  root = _folder(h, tmp_path / 'imgs', 2)
  h.save(root / 'a' / 'late.jpg', h.chest())
  data = (root / 'a' / 'late.jpg').read_bytes()
  (root / 'a' / 'late.jpg').write_bytes(data[:len(data) // 2])
  data_dir = tmp_path / 'tfds'
  with pytest.raises(ValueError, match=r'failed to decode[\s\S]*late.jpg'):
    prepare.prepare('image_folder', str(data_dir), manual_dir=str(root), workers=1)
  files = [p for p in data_dir.rglob('*')]
  assert not any(p.name == 'dataset_info.json' for p in files)
  assert not any(p.name.startswith('incomplete') for p in files)
  builder = prepare.make_builder('image_folder', str(data_dir))
  assert not prepare._is_prepared(builder)  # pylint: disable=protected-access
  # With skip_bad_files the same folder prepares and lists the file.
  builder = prepare.prepare('image_folder', str(data_dir), manual_dir=str(root), workers=1,
                            skip_bad_files=True)
  assert sum(s.num_examples for s in builder.info.splits.values()) == 4
  assert 'late.jpg' in builder.info.metadata['skipped_files'][0]


def test_training_pipeline_prepares_by_config(h, tmp_path):
  """The foundation's data config (name, options, manual_dir) reaches our builders."""
  import types
  pipeline = pytest.importorskip('cxr_jax.data.pipeline')
  if not hasattr(pipeline, 'get_builder'):
    pytest.skip('cxr_jax.data.pipeline.get_builder not available')
  root = _folder(h, tmp_path / 'imgs', 2)
  cfg = types.SimpleNamespace(name='image_folder', options='size=16,split_seed=2',
                              manual_dir=str(root))
  builder = pipeline.get_builder(cfg, str(tmp_path / 'tfds'))
  assert re.fullmatch(r'default_size-16_split_seed-2_[0-9a-f]{8}', builder.builder_config.name)
  assert sum(s.num_examples for s in builder.info.splits.values()) == 4
  cfg = types.SimpleNamespace(name='covid_qu_ex', options='config=infection,size=16',
                              manual_dir=None)
  with pytest.raises(Exception, match='infection'):
    pipeline.get_builder(cfg, str(tmp_path / 'tfds'))
