"""The workdir's config.json guard: another config is refused, a change named by
config.allow_changes is accepted and recorded, an unreadable config.json is named."""
import json

import pytest

from configs import default
from cxr_jax import configuration
from cxr_jax.train.workdir import RunError


def test_allowed_changes_are_recorded_and_others_refused(tmp_path):
  config = default.get_config()
  configuration.check_or_write_config(config, tmp_path)
  (tmp_path / 'pretrain' / 'low_res' / 'ckpt' / '40').mkdir(parents=True)
  config.pretrain.optimizer.lr = 1e-4
  config.finetune.steps = 7
  with pytest.raises(ValueError, match=r'(?s)pretrain.optimizer.lr: 0.001 -> 0.0001.*'
                                       r'--config.allow_changes=finetune.steps,pretrain.optimizer.lr'):
    configuration.check_or_write_config(config, tmp_path)
  config.allow_changes = 'pretrain.optimizer.lr'  # finetune.steps is still refused
  with pytest.raises(ValueError, match=r'finetune.steps: 200 -> 7') as refused:
    configuration.check_or_write_config(config, tmp_path)
  assert 'pretrain.optimizer.lr' not in str(refused.value)
  config.allow_changes = 'pretrain.optimizer, finetune'  # a key covers the keys under it
  configuration.check_or_write_config(config, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['pretrain']['optimizer']['lr'] == 1e-4 and 'allow_changes' not in saved
  [amendment] = saved['amendments']
  assert amendment['changes'] == {'finetune.steps': [200, 7], 'pretrain.optimizer.lr': [1e-3, 1e-4]}
  assert amendment['checkpoints'] == {'pretrain/low_res': 40}
  config.allow_changes = ''  # the amended config is the workdir's config from now on
  configuration.check_or_write_config(config, tmp_path)
  assert json.loads((tmp_path / 'config.json').read_text()) == saved
  config.pretrain.optimizer.lr = 1e-3
  with pytest.raises(ValueError, match=r'pretrain.optimizer.lr: 0.0001 -> 0.001'):
    configuration.check_or_write_config(config, tmp_path)


@pytest.mark.parametrize('text', ['{"seed": 0, "pretr', '', '[1, 2]'])
def test_an_unreadable_config_json_is_named(tmp_path, text):
  (tmp_path / 'config.json').write_text(text)
  with pytest.raises(RunError, match=rf'{tmp_path / "config.json"} is not the config of a run'):
    configuration.check_or_write_config(default.get_config(), tmp_path)


def test_a_config_json_from_before_stage_positives_resumes(tmp_path):
  config = default.get_config()
  configuration.check_or_write_config(config, tmp_path)
  saved = json.loads((tmp_path / 'config.json').read_text())
  for stage in saved['pretrain']['stages']:
    del stage['positives']  # as written before the key existed
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  configuration.check_or_write_config(config, tmp_path)  # 'image' is the old behaviour
  config.pretrain.stages[1].positives = 'patient'
  with pytest.raises(ValueError, match=r"pretrain.stages\[1\].positives: '<absent>' -> 'patient'"):
    configuration.check_or_write_config(config, tmp_path)
