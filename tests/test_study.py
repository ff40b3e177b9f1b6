"""A study of curricula in one workdir: the regime families alone:<method>,
curriculum:<name> and ssl_matched:<name> (names, folders, checks, an end-to-end run to
the report), and the Grad-CAM stage chosen for maps of at least 8x8."""
import copy
import json

import pytest

from configs import default
from cxr_jax import configuration, experiment, regimes, vocab
from cxr_jax.attention_job import cam_stage
from tests.test_experiment import tiny_config


@pytest.mark.parametrize('regime, folder', [
    ('curricular', 'pretrain'), ('ssl', 'pretrain_ssl'), ('ssl_matched', 'pretrain_ssl_matched'),
    ('alone:rotation', 'pretrain_alone_rotation'),
    ('alone:relative_position', 'pretrain_alone_relative_position'),
    ('curriculum:stages', 'pretrain_curriculum_stages'),
    ('ssl_matched:stages', 'pretrain_ssl_matched_stages'),
    ('ssl_matched:ssl', 'pretrain_ssl_matched_ssl')])
def test_each_pretraining_regime_has_its_own_folder_and_back(regime, folder):
  assert vocab.pretrain_folder(regime) == folder
  assert vocab.regime_of_folder(folder) == regime


def test_scratch_imagenet_and_foreign_names_have_no_pretraining_folder():
  assert [vocab.pretrain_folder(r) for r in ('scratch', 'imagenet', 'alone:', 'bogus:x')] == \
      [None] * 4
  assert [vocab.regime_of_folder(f) for f in ('pretrain_alone_', 'finetune', 'tfds')] == \
      [None] * 3


def test_the_report_lists_tasks_alone_before_their_curriculum_and_a_control_before_its_own():
  regimes = ['curriculum:stages', 'zz', 'curricular', 'alone:simclr', 'ssl_matched:stages',
             'scratch', 'alone:rotation', 'ssl_matched', 'curriculum:a']
  assert sorted(regimes, key=vocab.regime_order) == [
      'scratch', 'ssl_matched', 'alone:rotation', 'alone:simclr', 'curricular',
      'curriculum:a', 'ssl_matched:stages', 'curriculum:stages', 'zz']


def test_the_task_study_config_plans_each_regime():
  c = default.get_config('curriculum=tasks')
  configuration.validate(c)
  plans = {r: regimes.regime_plan(c, r) for r in regimes.inits(c)
           if vocab.pretrain_folder(r)}
  runs = {r: [(p.config.pretrain.stages[i].name, configuration.ssl.stage_method(
      p.config.pretrain, i)) for i in p.indices] for r, p in plans.items()}
  assert runs == {
      'alone:rotation': [('full_res', 'rotation')], 'alone:simclr': [('full_res', 'simclr')],
      'curricular': [('low_res', 'rotation'), ('full_res', 'simclr')],
      'ssl_matched:stages': [('full_res', 'simclr')],
      'curriculum:stages': [('low_res', 'simclr'), ('full_res', 'simclr')]}
  # alone:<m> matches the run's curriculum, ssl_matched:<name> its own
  assert plans['alone:rotation'].reference is c
  assert plans['ssl_matched:stages'].reference is plans['ssl_matched:stages'].config
  assert plans['curriculum:stages'].reference is None
  # by images: the curriculum's 270 x 128 images, the alone stage at its batch of 128
  by_images = copy.deepcopy(c)
  by_images.pretrain.match = 'images'
  alone = regimes.regime_plan(by_images, 'alone:rotation')
  matched = regimes.matched_config(alone.config, reference=alone.reference)
  assert matched.pretrain.stages[0].steps == 270
  assert default.get_config().finetune.inits == 'scratch,curricular'  # the demo keeps its own


@pytest.mark.parametrize('inits, message', [
    ('scratch,alone:colour', "config.finetune.inits: unknown init 'alone:colour'; 'colour' is not a method"),
    ('scratch,curriculum:tasks', "'tasks' is not a curriculum of config.pretrain.curricula (it has none)"),
    ('scratch,ssl_matched:x', "'x' is not a curriculum"),
    ('scratch,later:simclr', 'alone:<method>, curriculum:<name> or ssl_matched:<name>'),
])
def test_an_unknown_regime_is_one_config_error_naming_the_inits(inits, message):
  c = default.get_config()
  c.finetune.inits = inits
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate(c)
  assert message in str(e.value)


def test_a_named_curriculum_is_checked_as_a_stage_list_naming_its_key():
  c = default.get_config('curriculum=tasks')
  c.pretrain.curricula.stages[1].steps = 0
  with pytest.raises(configuration.ConfigError, match=r'config\.pretrain\.curricula\.stages\[1\]'
                                                      r'\.steps must be > 0'):
    configuration.validate(c)
  c = default.get_config('curriculum=tasks')
  c.augment_on, c.curriculum.pacing.kind = 'host', 'none'  # pretext tasks need the device
  c.pretrain.stages[0].method = 'simclr'
  with pytest.raises(configuration.ConfigError,
                     match=r"alone:rotation cannot run the target stage config\.pretrain\."
                           r"stages\[1\]: .*augment_on='device'"):
    configuration.validate(c)


@pytest.mark.parametrize('setting, size, stem, stage', [
    ('auto', 64, 'imagenet', 2),    # 16, 8, 4, 2: stage 2's 8x8
    ('auto', 128, 'imagenet', 3),   # stage 3's 8x8 (the last is 4x4)
    ('auto', 224, 'imagenet', 3),   # 14x14 (the last is 7x7)
    ('auto', 256, 'imagenet', None),  # the last stage is 8x8
    ('auto', 64, 'small', None),    # 64, 32, 16, 8: the last
    ('auto', 48, 'small', 3),       # 48, 24, 12, 6
    ('auto', 36, 'imagenet', 1),    # 9, 5, 3, 2: only stage 1 reaches 8
    ('auto', 16, 'imagenet', 1),    # none does: the finest there is
    (0, 64, 'imagenet', None), (3, 64, 'imagenet', 3), (4, 224, 'small', 4)])
def test_auto_takes_the_deepest_stage_with_a_map_of_at_least_8x8(setting, size, stem, stage):
  assert cam_stage(setting, size, stem) == stage


def test_the_default_explains_maps_of_at_least_8x8_and_paper_keeps_its_choice():
  from configs import paper
  assert default.get_config().explain.stage == 'auto'
  assert paper.get_config().explain.stage == 3  # documented there: 4x4 at 64 px


def test_a_study_runs_to_its_report_with_each_regime_compute_and_pairs(tmp_path,
                                                                         tiny_data_dir):
  c = tiny_config(tiny_data_dir)
  # few distinct programs (compilation is most of the cost): curricular and the named
  # curriculum run the same SimCLR stage (the persistent compilation cache compiles it
  # once), alone:rotation the rotation task on it
  c.pretrain.stages = [c.pretrain.stages[1]]
  c.pretrain.stages[0].steps = 3
  c.pretrain.curricula.one = [copy.deepcopy(c.pretrain.stages[0])]
  c.pretrain.rotation.head_hidden_dim = 16
  c.finetune.update(dict(inits='alone:rotation,curricular,curriculum:one',
                         steps=2, eval_every=1, batch_size=8, image_size=32, num_seeds=1))
  c.eval_batch_size = 64
  experiment.run(c, tmp_path)
  for folder in ('pretrain', 'pretrain_alone_rotation', 'pretrain_curriculum_one'):
    assert [p.parent.name for p in (tmp_path / folder).glob('*/compute.json')] == \
        ['full_res'], folder

  def record(path):
    return json.loads((tmp_path / path / 'full_res' / 'compute.json').read_text())
  alone = record('pretrain_alone_rotation')
  # matched by images (config.pretrain.match): the curriculum's 3 x 16 images
  assert (alone['steps'], alone['images']) == (3, 48)
  assert alone['views'] == 48 * 4  # four rotations per image
  assert record('pretrain')['views'] == 48 * 2  # SimCLR: two views
  assert record('pretrain_curriculum_one')['flops'] == record('pretrain')['flops']
  report = (tmp_path / 'report.md').read_text()
  compute = report.split('## Pretraining compute per regime')[1].split('\n## ')[0]
  assert [line.split(' | ')[0] for line in compute.splitlines() if line.startswith('| ')][1:] == \
      ['| alone:rotation', '| curricular', '| curriculum:one']
  pairs = report.split('## Paired comparisons')[1].split('\n## ')[0]
  assert '| curricular | alone:rotation |' in pairs  # claim (i): the curriculum vs a task alone
  assert '| curriculum:one | curricular |' in pairs
  assert '| curriculum:one | alone:rotation |' in pairs


@pytest.mark.parametrize('arg, stages', [
    ('curriculum=tasks', [('rotation', 'rotation'), ('simclr', 'simclr')]),
    ('curriculum=tasks,tasks=rotation+jigsaw+byol', [('rotation', 'rotation'),
                                                     ('jigsaw', 'jigsaw'), ('byol', 'byol')])])
def test_the_paper_config_runs_a_task_curriculum_against_each_task_alone(arg, stages):
  from configs import paper
  c = paper.get_config(arg)
  configuration.validate(c)
  assert [(s.name, s.method) for s in c.pretrain.stages] == stages
  assert [s.name for s in c.pretrain.curricula.stages] == ['low_res', 'full_res']
  assert regimes.inits(c) == ['scratch', *(f'alone:{t}' for t, _ in stages), 'curricular',
                              'ssl_matched:stages', 'curriculum:stages']
  assert c.pretrain.match == 'flops'
  c.phantom = 'size=32,seed=1'  # every stage's data follows the config's phantom
  assert {s.data.options for s in [*c.pretrain.stages, *c.pretrain.curricula.stages]} == \
      {'size=32,seed=1'}
  with pytest.raises(ValueError, match='tasks= needs curriculum=tasks'):
    paper.get_config('tasks=rotation')


def test_a_workdir_of_before_the_families_resumes_under_todays_default(tmp_path):
  old = json.loads(default.get_config().to_json_best_effort())
  del old['pretrain']['curricula'], old['allow_changes']  # config.json keeps no allow_changes
  old['explain']['stage'] = 0  # the default before 'auto'; unused with explain off
  (tmp_path / 'config.json').write_text(json.dumps(old))
  configuration.check_or_write_config(default.get_config(), tmp_path)  # no error
  explained = default.get_config()
  explained.explain.enabled = True  # then the maps would change: refused, naming the key
  old['explain']['enabled'] = True
  (tmp_path / 'config.json').write_text(json.dumps(old))
  with pytest.raises(configuration.ConfigError, match="explain.stage: 0 -> 'auto'"):
    configuration.check_or_write_config(explained, tmp_path)
