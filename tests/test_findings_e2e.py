"""Multi-label findings end to end: configs/paper.py on tiny CheXpert- and NIH-layout
fixtures written here (runlocal sizes, 32 px, one compiled shape for both), the report's
per-finding tables with CIs; any registered builder as `dataset=`; finding names checked
against the builder's list."""
import json
import types

import numpy as np
import pytest

from configs import paper
from cxr_jax import configuration, experiment
from cxr_jax.data import schema
from tests.data.builders.conftest import Helpers as h
from tests.data.builders.test_multilabel_builders import CHEX_HEADER

CHEXPERT5 = ('Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion')
NIH5 = ('Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Effusion')
NIH_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,'
              'View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]')


def _chexpert(root, rng):
  """CheXpert-v1.0-small with 40 train patients and 16 valid (test) images; observations
  1 / 0 / -1 (uncertain: NaN under the default U-Ignore) / blank (0)."""
  p = 'CheXpert-v1.0-small'
  values = ['1.0', '0.0', '-1.0', '']
  rows = {'train': [], 'valid': []}
  for split, count in (('train', 40), ('valid', 16)):
    for i in range(count):
      obs = [values[k] for k in rng.choice(4, size=14, p=[0.35, 0.35, 0.1, 0.2])]
      obs[0] = ''  # No Finding
      rows[split].append(f'{p}/{split}/patient{i:05d}{split[0]}/study1/view1_frontal.jpg,'
                         f'Female,50,Frontal,AP,' + ','.join(obs))
  for split, lines in rows.items():
    h.write(root / p / f'{split}.csv', CHEX_HEADER + '\n' + '\n'.join(lines) + '\n')
    for i, line in enumerate(lines):
      h.save(root / line.split(',')[0], h.chest(40, 36, seed=i))
  return root / p


def _nih(root, rng):
  """NIH ChestX-ray14 with 56 patients, the last 16 in test_list.txt."""
  lines, names = [], []
  for i in range(56):
    found = [f for f in NIH5 if rng.random() < 0.4] or ['No Finding']
    name = f'{i + 1:08d}_000.png'
    lines.append(f'{name},{"|".join(found)},0,{i + 1},50,M,PA,2500,2048,0.14,0.14')
    names.append(name)
    h.save(root / 'images' / name, h.chest(40, 36, seed=i))
  h.write(root / 'Data_Entry_2017_v2020.csv', NIH_HEADER + '\n' + '\n'.join(lines) + '\n')
  h.write(root / 'train_val_list.txt', '\n'.join(names[:40]) + '\n')
  h.write(root / 'test_list.txt', '\n'.join(names[40:]) + '\n')
  return root


@pytest.mark.parametrize('dataset,findings', [('chexpert_cxr', CHEXPERT5),
                                              ('nih_cxr14', NIH5)])
def test_paper_config_runs_multilabel_and_reports_per_finding_cis(tmp_path, dataset, findings):
  rng = np.random.default_rng(0)
  root = (_chexpert if dataset == 'chexpert_cxr' else _nih)(tmp_path / 'raw', rng)
  config = paper.get_config(
      f'dataset={dataset},data_root={root},findings={"+".join(findings)},runlocal=true,'
      f'backbone=resnet18,stage1=none,inits=scratch,protocols=finetune+knn,'
      f'fractions=1.0,options=size=32,data_dir={tmp_path / "tfds"}')
  # Grad-CAM of one chosen finding (absent / present) on NIH; CheXpert without it (time)
  config.explain.enabled = dataset == 'nih_cxr14'
  config.explain.finding = 'Edema'
  workdir = tmp_path / 'run'
  results = experiment.run(config, workdir)
  assert {r['task'] for r in results} == {'findings'}
  assert all(r['class_names'] == list(findings) for r in results)
  assert all(sorted(r['train_positives']) == sorted(findings) for r in results)
  preds = np.load(workdir / 'finetune/scratch/1/seed0/test_predictions.npz')
  assert preds['probs'].shape == preds['labels'].shape == (16, 5)
  assert np.all((preds['probs'] > 0) & (preds['probs'] < 1))
  if dataset == 'chexpert_cxr':  # uncertain labels under U-Ignore stay NaN in the targets
    assert np.isnan(preds['labels']).any()
  report = (workdir / 'report.md').read_text()
  assert '### Fine-tuning: per-finding AUROC (mean ± std over seeds [95% CI])' in report
  assert '### kNN (frozen encoder): per-finding AP' in report
  header = next(line for line in report.splitlines() if line.startswith('| init') and
                findings[0] in line)
  assert header.endswith(' | '.join(findings) + ' |')
  row = next(line for line in report.splitlines() if line.startswith('| scratch | 1 |')
             and line.count('[') == 5)  # a CI for every finding
  assert row
  if dataset == 'nih_cxr14':
    attention = np.load(workdir / 'finetune/scratch/1/seed0/attention.npz')
    np.testing.assert_array_equal(attention['labels'], preds['labels'][:, 3] >= 0.5)
    np.testing.assert_allclose(attention['probs'][:, 1], preds['probs'][:, 3], atol=1e-5)
    assert results[0]['attention_class_names'] == ['no Edema', 'Edema']
    assert '## Attention: Grad-CAM share inside the lungs' in report
  if dataset == 'nih_cxr14':  # export / load_model carry the task: a sigmoid per finding
    from cxr_jax import trained
    from cxr_jax.cli import export
    from cxr_jax.data import pipeline
    out = export.export(workdir, tmp_path / 'model', n_boot=20)
    model = trained.load_model(out, batch_size=16)
    assert model.multilabel and model.class_names == list(findings)
    assert json.loads((out / 'model.json').read_text())['task'] == 'findings'
    builder = pipeline.get_builder(config.finetune.data, config.data_dir)
    images = pipeline.read_all(pipeline.get_source(builder, 'test'), ('image',))['image']
    np.testing.assert_allclose(model.predict(images), preds['probs'], atol=1e-6, rtol=0)
    from cxr_jax.cli import predict
    import csv
    files = sorted((root / 'images').glob('*.png'))[:4]
    assert predict.run(model, files, tmp_path / 'pred.csv', progress=False) == []
    rows = list(csv.DictReader(open(tmp_path / 'pred.csv')))
    for row in rows:  # the findings at p >= 0.5, '|'-separated
      want = [f for f in findings if float(row[f'prob_{f}']) >= 0.5]
      assert row['predicted'] == '|'.join(want)


def test_any_registered_builder_is_a_paper_dataset_with_its_metadata(tmp_path):
  c = paper.get_config('dataset=kermany_pneumonia,runlocal=true,data_root=/raw,stage1=none')
  assert c.pretrain.stages[-1].data.split == 'train' and c.explain.extra_masks == ''
  assert c.finetune.data.findings == ''
  c = paper.get_config('dataset=cxr_collection,data_root=/raw,stage1=none')
  assert c.pretrain.stages[-1].data.split == 'unlabeled'
  assert c.explain.extra_masks == 'device,opacity'
  with pytest.raises(ValueError, match="dataset='nope'.*nih_cxr14"):
    paper.get_config('dataset=nope')
  with pytest.raises(ValueError, match="options= sets a real dataset's builder options"):
    paper.get_config('options=size=32')
  # kermany on a tiny fixture: the config's data specs all open (check_data)
  for split in ('train', 'val', 'test'):
    for k, cls in enumerate(('NORMAL', 'PNEUMONIA')):
      for i in range(3):
        name = f'person{i}_bacteria_{i}.jpeg' if k else f'IM-{i:04d}-0001.jpeg'
        h.save(tmp_path / 'k' / split / cls / name, h.chest(40, 36, seed=i))
  c = paper.get_config(f'dataset=kermany_pneumonia,runlocal=true,data_root={tmp_path / "k"},'
                       'stage1=none,options=size=32')
  configuration.validate(c)
  configuration.check_data(c, tmp_path / 'tfds')


def test_finding_names_are_checked_against_the_builders_list():
  builder = types.SimpleNamespace(
      name='toy', FINDING_NAMES=('Edema', 'Pleural Effusion'),
      info=types.SimpleNamespace(features={'targets': types.SimpleNamespace(shape=(2,))}))
  assert schema.select_findings(builder, 'all') == (('Edema', 'Pleural Effusion'), [0, 1])
  assert schema.select_findings(builder, 'Pleural Effusion+Edema') == (
      ('Pleural Effusion', 'Edema'), [1, 0])
  with pytest.raises(ValueError, match=r"config.finetune.data.findings: \['Edma'\] not among "
                     r"the findings of dataset 'toy': \['Edema', 'Pleural Effusion'\]"):
    schema.select_findings(builder, 'Edma,Edema')
  plain = types.SimpleNamespace(name='plain', info=types.SimpleNamespace(features={}))
  with pytest.raises(ValueError, match="dataset 'plain' has no multi-label findings"):
    schema.select_findings(plain, 'all')


def test_bad_findings_config_is_named_before_any_training(tmp_path):
  from configs import default
  from tests.conftest import TINY_PHANTOM
  c = default.get_config('task=findings')
  c.phantom = TINY_PHANTOM  # without findings=True: no targets
  c.finetune.inits = 'scratch'
  with pytest.raises(ValueError, match="findings='all': dataset 'phantom' has no multi-label"):
    configuration.check_data(c, tmp_path)
  c.phantom = TINY_PHANTOM + ',findings=True'
  c.finetune.data.findings = 'opacity,device'
  c.explain.finding = 'effusion'
  with pytest.raises(ValueError, match=r"config.explain.finding='effusion' is not one of the "
                     r"fine-tuned findings \['opacity', 'device'\]"):
    configuration.check_data(c, tmp_path)
