"""Using a trained model: one preprocessing for preparation and prediction, export to a
self-contained folder (load_model reproduces the run's test probabilities), predict on
files (real PNGs and a DICOM; bad files listed, non-zero exit), ONNX (optional extra).

One tiny fine-tuning run (scratch, 4 steps, 32 px) serves every test of the module."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_jax.cli import export, predict
from cxr_jax import trained
from cxr_jax.data import imageio, pipeline
from tests.test_experiment import tiny_config

REAL = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'real'
JOB = 'finetune/scratch/1/seed0'


def _chest(h=48, w=40, seed=0):
  rng = np.random.default_rng(seed)
  x = np.full((h, w), 90.0)
  x[h // 6:h * 5 // 6, w // 8:w * 3 // 8] = 30
  x[:, w * 7 // 16:w * 9 // 16] = 210
  return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def run(tmp_path_factory, tiny_data_dir):
  """A finished tiny run (protocol finetune, scratch, one seed) and its test images."""
  from cxr_jax import experiment
  config = tiny_config(tiny_data_dir)
  config.finetune.inits, config.finetune.protocols = 'scratch', 'finetune'
  config.finetune.num_seeds, config.finetune.steps, config.finetune.eval_every = 1, 4, 2
  config.finetune.batch_size, config.finetune.image_size, config.eval_batch_size = 8, 32, 16
  workdir = tmp_path_factory.mktemp('run')
  experiment.run(config, workdir)
  builder = pipeline.get_builder(config.finetune.data, tiny_data_dir)
  test = pipeline.read_all(pipeline.get_source(builder, 'test'), ('image',))['image']
  out = export.export(workdir, workdir.parent / 'exported_model', n_boot=100)  # fast CIs
  return workdir, test, out


BATCH = 16  # one batch shape everywhere: the programs compile once (persistent cache)


@pytest.fixture(scope='module')
def model(run):
  return trained.load_model(run[2], batch_size=BATCH)


def test_load_for_model_is_exactly_what_preparation_stores(tmp_path):
  pydicom_files = pytest.importorskip('tests.dicom_files')
  pytest.importorskip('pydicom')
  png = tmp_path / 'a.png'
  Image.fromarray(np.stack([_chest()] * 3, -1)).save(png)  # RGB, not square
  dcm = pydicom_files.make_dicom(tmp_path / 'b.dcm', _chest(40, 56).astype(np.uint16) * 200,
                                 photometric='MONOCHROME1', bits_stored=16)
  for path in (png, dcm):
    item = imageio.ImageItem(id=Path(path).name, image=str(path), label=0, patient_id='p')
    record = imageio.encode_item(item, 32)  # what prepare writes for the file
    loaded = imageio.load_for_model(path, 32)
    assert loaded.dtype == np.uint8 and loaded.shape == (32, 32, 1)
    np.testing.assert_array_equal(record['image'], loaded)


def test_a_prepared_record_is_load_for_model_of_its_source_file(tmp_path):
  """Through prepare itself (the image_folder builder): every stored image equals
  load_for_model of its file (PNG gray and RGB, JPEG, DICOM MONOCHROME1)."""
  pytest.importorskip('pydicom')
  from cxr_jax.data import prepare
  from tests.dicom_files import make_dicom
  root = tmp_path / 'mine'
  (root / 'img').mkdir(parents=True)
  Image.fromarray(_chest(48, 40, 0)).save(root / 'img' / 'a.png')
  Image.fromarray(np.stack([_chest(40, 56, 1)] * 3, -1)).save(root / 'img' / 'b.png')
  Image.fromarray(np.stack([_chest(50, 50, 2)] * 3, -1)).save(root / 'img' / 'c.jpg', quality=95)
  make_dicom(root / 'img' / 'd.dcm', _chest(60, 44, 3).astype(np.uint16) * 200,
             photometric='MONOCHROME1', bits_stored=16)
  (root / 'labels.csv').write_text('path,label,patient_id\n' + ''.join(
      f'img/{n},{"normal" if i % 2 else "pneumonia"},p{i}\n'
      for i, n in enumerate(['a.png', 'b.png', 'c.jpg', 'd.dcm'])))
  builder = prepare.prepare('image_folder', str(tmp_path / 'tfds'), manual_dir=str(root),
                            workers=1, size=32)
  seen = 0
  for source in builder.as_data_source().values():
    for i in range(len(source)):
      record = source[i]
      path = root / record['id'].decode()
      np.testing.assert_array_equal(record['image'], imageio.load_for_model(path, 32),
                                    err_msg=str(path))
      seen += 1
  assert seen == 4


def test_the_exported_model_reproduces_the_runs_test_probabilities(run, model):
  workdir, test_images, out = run
  assert sorted(p.name for p in out.iterdir()) == ['README.md', 'model.json', 'weights.msgpack']
  meta = json.loads((out / 'model.json').read_text())
  assert meta['provenance']['job'] == JOB
  assert meta['image_size'] == 32 and meta['storage_size'] == 32 and meta['channels'] == 1
  assert meta['architecture']['width'] == 0.125
  config_bytes = (workdir / 'config.json').read_bytes()
  import hashlib
  assert meta['provenance']['config_sha256'] == hashlib.sha256(config_bytes).hexdigest()
  assert meta['provenance']['cxr_jax']
  card = (out / 'README.md').read_text()
  assert 'not for diagnosis' in card and '| auroc |' in card and '[' in card  # with a CI

  import cxr_jax
  assert cxr_jax.load_model is trained.load_model  # lazily exported by the package
  assert model.class_names == meta['class_names'] and model.image_size == 32
  with np.load(workdir / JOB / 'test_predictions.npz') as f:
    expected = f['probs']
  probs = model.predict(test_images)
  assert probs.dtype == np.float32 and probs.shape == expected.shape
  np.testing.assert_allclose(probs, expected, atol=1e-6, rtol=0)
  maps = model.gradcam(test_images[:3])
  assert maps.shape == (3, 32, 32) and np.all(maps >= 0) and np.isfinite(maps).all()


def test_from_workdir_reproduces_the_runs_test_probabilities(run):
  """The one loader of a trained classifier: rebuilt from W/config.json and best.msgpack."""
  workdir, test_images, _ = run
  model = trained.from_workdir(workdir, JOB, batch_size=BATCH)
  with np.load(workdir / JOB / 'test_predictions.npz') as f:
    expected = f['probs']
  np.testing.assert_allclose(model.predict(test_images), expected, atol=1e-6, rtol=0)
  assert model.job == JOB


def test_the_default_job_is_the_best_by_val_score_and_job_picks_another(run, tmp_path):
  workdir = run[0]
  # a copy with a second job whose val score is higher: it becomes the default
  shutil.copytree(workdir / 'finetune', tmp_path / 'finetune')
  shutil.copy(workdir / 'config.json', tmp_path / 'config.json')
  other = tmp_path / 'finetune/scratch/1/seed1'
  shutil.copytree(tmp_path / JOB, other)
  result = json.loads((other / 'result.json').read_text())
  result['seed'], result['val_score'] = 1, result['val_score'] + 1.0
  (other / 'result.json').write_text(json.dumps(result))
  assert trained.select_job(tmp_path)['seed'] == 1
  assert trained.select_job(tmp_path, JOB)['seed'] == 0
  result['val_score'] -= 1.0  # a tie: the first in report order (seed 0)
  (other / 'result.json').write_text(json.dumps(result))
  assert trained.select_job(tmp_path)['seed'] == 0
  with pytest.raises(ValueError, match='no finished fine-tuning job of that name'):
    trained.select_job(tmp_path, 'finetune/curricular/1/seed0')
  (other / 'best.msgpack').unlink()  # an older run's job: a clear error
  with pytest.raises(FileNotFoundError, match='did not keep its selected weights'):
    trained.load_job(tmp_path, 'finetune/scratch/1/seed1')


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def test_predict_on_real_pngs_and_a_dicom_matches_load_model(run, model, tmp_path, capsys):
  if not REAL.exists():
    pytest.skip(f'the real sample X-rays are not at {REAL}')
  pytest.importorskip('pydicom')
  workdir, _, out = run
  folder = tmp_path / 'in'
  folder.mkdir()
  pngs = sorted((REAL / 'covid_qu_ex_tiny').rglob('images/*.png'))[:3]
  for i, p in enumerate(pngs):
    shutil.copy(p, folder / f'{i}_{p.name}')
  shutil.copy(REAL / 'dicom' / 'nhsx_nih_cxr.dcm', folder / 'nih.dcm')
  output = tmp_path / 'preds.csv'
  rc = predict.main([f'--model={workdir}', f'--input={folder}', f'--output={output}',
                     f'--gradcam={tmp_path / "cams"}', f'--batch_size={BATCH}', '--no_progress'])
  assert rc == 0, capsys.readouterr().err
  rows = _read_csv(output)
  files = sorted(folder.iterdir())
  assert [r['path'] for r in rows] == [str(f) for f in files]
  images = np.stack([model.preprocess(f) for f in files])
  expected = model.predict(images)
  got = np.array([[float(r[f'prob_{c}']) for c in model.class_names] for r in rows])
  np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
  assert [r['predicted'] for r in rows] == [model.class_names[k] for k in expected.argmax(1)]
  assert {r['model'] for r in rows} == {JOB}
  assert sorted(p.name for p in (tmp_path / 'cams').iterdir()) == sorted(f'{f.stem}.png' for f in files)
  assert not Path(str(output) + '.errors.csv').exists()


def test_bad_files_are_listed_and_the_rest_predicted_with_a_nonzero_exit(run, tmp_path, capsys):
  pytest.importorskip('pydicom')
  from tests.dicom_files import make_dicom
  folder = tmp_path / 'in'
  folder.mkdir()
  for i in range(2):
    Image.fromarray(_chest(seed=i)).save(folder / f'good{i}.png')
  (folder / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'not really a png' * 10)
  dcm = Path(make_dicom(folder / 'truncated.dcm', _chest(64, 64)))
  data = dcm.read_bytes()
  dcm.write_bytes(data[:len(data) - 2000])  # pixel data cut short
  csv_in = tmp_path / 'list.csv'  # CSV input, paths relative to its folder
  listed = [f'in/{p.name}' for p in sorted(folder.iterdir())] + ['in/missing.png']
  csv_in.write_text('path\n' + '\n'.join(listed))
  output = tmp_path / 'preds.csv'
  rc = predict.main([f'--model={run[2]}', f'--input={csv_in}', f'--output={output}',
                     f'--batch_size={BATCH}', '--no_progress'])
  err = capsys.readouterr().err
  assert rc == 1
  assert [Path(r['path']).name for r in _read_csv(output)] == ['good0.png', 'good1.png']
  errors = {Path(r['path']).name: r['reason'] for r in _read_csv(str(output) + '.errors.csv')}
  assert sorted(errors) == ['corrupt.png', 'missing.png', 'truncated.dcm']
  assert 'not found' in errors['missing.png']
  assert all(reason.strip() for reason in errors.values())
  assert 'corrupt.png' in err and 'truncated.dcm' in err and '3 file(s) failed' in err


def test_onnx_matches_jax(run, model, tmp_path):
  pytest.importorskip('jax2onnx')
  ort = pytest.importorskip('onnxruntime')
  test_images = run[1]
  path = export.write_onnx(model, tmp_path / 'model.onnx')  # a symbolic batch
  x = model.model_inputs(test_images[:8])
  session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  got = session.run(None, {session.get_inputs()[0].name: x})[0]
  np.testing.assert_allclose(got, model.predict(test_images[:8]), atol=1e-4, rtol=0)


def test_onnx_of_a_densenet_matches_jax(tmp_path):
  """The export-friendly stem max-pool reaches every backbone (DenseNet too), so its ONNX
  model is onnxruntime-runnable and agrees with JAX."""
  pytest.importorskip('jax2onnx')
  ort = pytest.importorskip('onnxruntime')
  import jax
  import ml_collections
  from cxr_jax.models import heads
  from cxr_jax.train import state as state_lib
  arch = dict(name='densenet121', width=0.125, stem='imagenet', dtype='float32', remat=False)
  module = heads.ClassifierModel(
      encoder=state_lib.encoder_from_config(ml_collections.ConfigDict(arch)), num_classes=3)
  variables = jax.device_get(state_lib.init_variables(module, jax.random.PRNGKey(0), 1))
  meta = {'class_names': ['a', 'b', 'c'], 'image_size': 32, 'storage_size': 32,
          'channels': 1, 'architecture': arch}
  model = trained.Model(meta, variables, batch_size=4)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
  path = export.write_onnx(model, tmp_path / 'densenet.onnx', batch_size=4)
  session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  got = session.run(None, {session.get_inputs()[0].name: model.model_inputs(images)})[0]
  np.testing.assert_allclose(got, model.predict(images), atol=1e-4, rtol=0)
