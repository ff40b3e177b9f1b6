"""launch.py end to end on a tiny phantom: a kill during pretraining, a resume that does not
start pretraining over, the report, and clear errors for bad configs."""
import json
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, subprocess_env, tiny_overrides


def _launch(workdir, *extra, cache=None, data_dir=None, **kw):
  cmd = [sys.executable, 'launch.py', '--config=configs/default.py', f'--workdir={workdir}',
         *tiny_overrides(data_dir), *extra]
  return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(cache), capture_output=True, text=True,
                        timeout=900, **kw)


def _metrics(workdir):
  return [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_killed_run_resumes_and_finishes(tmp_path, jax_cache_dir, tiny_data_dir):
  workdir = tmp_path / 'run'
  longer = ['--config.pretrain.stages[0].steps=40']
  cmd = [sys.executable, 'launch.py', '--config=configs/default.py', f'--workdir={workdir}',
         *tiny_overrides(tiny_data_dir), *longer]
  proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(jax_cache_dir),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  ckpt = workdir / 'pretrain' / 'low_res' / 'ckpt'
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in ckpt.glob('*') if p.name.isdigit()] if ckpt.exists() else []
    if steps and max(steps) >= 4:
      break
    time.sleep(0.2)
  assert proc.poll() is None, 'the run ended before it could be killed: ' + proc.stderr.read()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(r['step']) for r in _metrics(workdir) if r['job'] == 'pretrain/low_res')
  assert 4 <= killed_at < 40
  assert not (workdir / 'pretrain' / 'low_res' / 'done.json').exists()

  result = _launch(workdir, *longer, cache=jax_cache_dir, data_dir=tiny_data_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [r for r in _metrics(workdir) if r['job'] == 'pretrain/low_res']
  steps = [r['step'] for r in rows]
  # the second run logged only steps after its resume point: pretraining did not start over
  assert steps.count(2) == 1, f'step 2 was trained twice: {steps}'
  assert max(steps) == 40 and sorted(set(steps)) == list(range(2, 41, 2))

  report = (workdir / 'report.md').read_text()
  assert '| scratch | 1 | 1 |' in report and '| curricular | 1 | 1 |' in report
  for init in ('scratch', 'curricular'):
    res = json.loads((workdir / 'finetune' / init / '1' / 'seed0' / 'result.json').read_text())
    assert 0.0 <= res['test']['auroc'] <= 1.0 and res['num_train'] == 16
  config = json.loads((workdir / 'config.json').read_text())
  assert config['pretrain']['stages'][0]['steps'] == 40
  assert any((workdir / 'tensorboard').iterdir())

  # a third run finds everything done and trains nothing
  before = (workdir / 'metrics.jsonl').read_text()
  again = _launch(workdir, *longer, cache=jax_cache_dir, data_dir=tiny_data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (workdir / 'metrics.jsonl').read_text() == before

  # the same workdir with another config is refused, naming the difference
  other = _launch(workdir, '--config.pretrain.stages[0].steps=41', data_dir=tiny_data_dir)
  assert other.returncode != 0
  assert 'holds a run of a different config' in other.stderr
  assert 'pretrain.stages[0].steps: 40 -> 41' in other.stderr


def test_a_second_launch_on_a_workdir_in_use_fails_at_once_in_one_line(tmp_path, tiny_data_dir):
  import os
  import socket
  from cxr_jax.train import workdir
  run = tmp_path / 'run'
  run.mkdir()
  with workdir.lock(run):  # as a run in progress holds it
    result = _launch(run, data_dir=tiny_data_dir)
  assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: {run} is in use by another run: process {os.getpid()} on host '
      f'{socket.gethostname()} (since ')
  assert not (run / 'config.json').exists()


def _one_line_error(result, message):
  """launch.py failed as a user error: exit code 1, stderr one line `error: ...` naming
  `message`, no traceback."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 1, result.stderr[-3000:]
  assert len(lines) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert lines[0].startswith('error: ') and message in lines[0], lines[0]


@pytest.mark.parametrize('override, message', [
    ('--config.pretrain.temprature=0.1', 'unknown config key config.pretrain.temprature'),
    ('--config.pretrain.stages[0].data.split=unlabelled',
     "config.pretrain.stages[0].data.split: dataset 'phantom' has no split 'unlabelled'"),
    ('--config.pretrain.method=simclrr', "config.pretrain.method must be one of"),
    ('--config.finetune.steps=-5', 'config.finetune.steps must be an integer >= 1, got -5'),
    ('--config.finetune.steps=many', 'flag --config.finetune.steps=many'),
    ('--config.finetune.inits=scratch,imagenett', "unknown init 'imagenett'"),
    ('--config.curriculum.pacing=cubic', "pacing.kind must be one of"),
])
def test_bad_config_is_one_line(tmp_path, tiny_data_dir, override, message):
  """Each fails in the config or data checks, before anything is compiled."""
  result = _launch(tmp_path / 'bad', override, data_dir=tiny_data_dir)
  _one_line_error(result, message)
  if override.endswith('=-5'):  # --verbose: the traceback too, then the same line
    verbose = _launch(tmp_path / 'bad', override, '--verbose', data_dir=tiny_data_dir)
    assert verbose.returncode == 1 and 'Traceback' in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-1] == result.stderr.strip()


@pytest.mark.parametrize('arg, message', [
    ('dataset=nih_cxr14', 'configs/paper.py: dataset=nih_cxr14 needs data_root=<'),
    ('dataset=nih_cxr14,data_root=/raw/nih', 'stage1=image_folder (the default) needs '
     'natural_dir=<a folder of natural images>; or stage1=none'),
    ('method=simclrr', "configs/paper.py: method='simclrr'; choose from"),
    # a dataset not prepared in data_dir, and no raw folder to prepare it from
    ('dataset=covid19_radiography,stage1=none,data_dir=/nonexistent/tfds',
     "config.pretrain.stages[0].data.manual_dir is empty and dataset 'covid19_radiography'"
     " (config 'default') is not prepared in /nonexistent/tfds"),
    ('dataset=covid19_radiography,stage1=none,data_root=/nonexistent/raw',
     'config.pretrain.stages[0].data.manual_dir=/nonexistent/raw: no such folder'),
])
def test_paper_config_arguments_are_named_in_one_line(tmp_path, arg, message):
  result = subprocess.run([sys.executable, 'launch.py', f'--config=configs/paper.py:{arg}',
                           f'--workdir={tmp_path / "w"}'], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  _one_line_error(result, message)
  if 'data_' not in arg:  # refused before the workdir is touched
    assert not (tmp_path / 'w').exists()


def test_prepared_data_from_changed_files_is_refused_in_one_line(tmp_path):
  """A prepared image_folder whose image changed since: DataIdentityError, one line (a
  note added beside the images changes nothing)."""
  import numpy as np
  from PIL import Image
  from cxr_jax.data import prepare
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  rng = np.random.default_rng(0)
  for i in range(8):
    (raw / 'ab'[i % 2]).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(raw / 'ab'[i % 2] / f'{i}.png')
  prepare.prepare('image_folder', str(data_dir), manual_dir=str(raw), size=32, workers=1)
  Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(raw / 'b' / '0.png')
  (raw / 'notes.txt').write_text('not read by the builder')
  data = ['name=image_folder', 'options=size=32', f'manual_dir={raw}']
  args = [f'--config.pretrain.stages[{s}].data.{kv}' for s in (0, 1) for kv in data + ['split=train']]
  args += [f'--config.finetune.data.{kv}' for kv in data]
  result = _launch(tmp_path / 'run', *args, data_dir=data_dir)
  _one_line_error(result, 'image_folder: ')
  assert ('but config.pretrain.stages[0].data.manual_dir is the same folder, changed since'
          in result.stderr)
  assert '(b/0.png)' in result.stderr and 'notes.txt' not in result.stderr


def test_a_real_dataset_builder_by_config_alone(tmp_path, jax_cache_dir):
  """The same plan on the generic `image_folder` builder (class sub-folders of PNGs), chosen
  by config overrides only: prepared on first use from manual_dir, pretrained, fine-tuned."""
  import numpy as np
  from PIL import Image
  from cxr_jax.data.builders import phantom
  raw = tmp_path / 'raw'
  for i in range(64):
    label = i % 4
    folder = raw / phantom.CLASS_NAMES[label]
    folder.mkdir(parents=True, exist_ok=True)
    image = phantom.render(np.random.default_rng(i), label, 32)['image'][..., 0]
    Image.fromarray(image).save(folder / f'img{i:03d}.png')
  data = ['name=image_folder', 'options=size=32', f'manual_dir={raw}']
  args = [f'--config.pretrain.stages[{s}].data.{kv}' for s in (0, 1) for kv in data + ['split=train']]
  args += [f'--config.finetune.data.{kv}' for kv in data]
  workdir = tmp_path / 'run'
  result = _launch(workdir, *args, f'--config.data_dir={tmp_path / "tfds"}', cache=jax_cache_dir)
  assert result.returncode == 0, result.stderr[-3000:]
  res = json.loads((workdir / 'finetune' / 'curricular' / '1' / 'seed0' / 'result.json').read_text())
  assert res['class_names'] == sorted(phantom.CLASS_NAMES)  # class folders, sorted
  assert res['num_train'] > 0 and 0.0 <= res['test']['auroc'] <= 1.0
  assert (workdir / 'pretrain' / 'full_res' / 'ckpt').exists()


def test_spec_shorthands_expand():
  """`--config.curriculum.pacing=root` sets the pacing kind; a number given for a schedule
  makes it constant (that the expanded flags reach the config: test_bad_config_is_named)."""
  from cxr_jax.cli import launch
  argv = ['launch.py', '--config=configs/default.py', '--workdir=/unused',
          '--config.curriculum.pacing=root', '--config.pretrain.stages[1].strength=0.7',
          '--config.pretrain.method=byol']
  config, argv = launch.load_config(argv)
  assert config.pretrain.method == 'simclr'  # overrides are ml_collections' to apply
  assert argv[2:] == ['--config.curriculum.pacing.kind=root',
                      '--config.pretrain.stages[1].strength.kind=constant',
                      '--config.pretrain.stages[1].strength.start=0.7',
                      '--config.pretrain.method=byol']


def test_the_compilation_cache_keeps_small_programs_and_tests_keep_out_of_the_users(
    tmp_path, monkeypatch):
  # JAX's default leaves out programs compiled in under a second (most of a run's small
  # ones on a GPU); the launcher caches every program, in its folder, unless the
  # environment names another (as conftest.py does for the tests: never ~/.cache)
  import os
  from cxr_jax.cli import launch
  code = ('import sys, jax\nfrom cxr_jax.cli import launch\n'
          'print(launch.use_compilation_cache(sys.argv[1]))\n'
          'jax.jit(lambda x: x * 2 + 1)(jax.numpy.ones(3)).block_until_ready()\n')
  env = subprocess_env()
  for name in ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'):
    env.pop(name, None)
  result = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'user')], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == [str(tmp_path / 'user')]
  assert os.listdir(tmp_path / 'user')  # the tiny program was written
  # off, and redirected by the environment: JAX's config is left alone
  import jax
  monkeypatch.setattr(jax.config, 'update', lambda *a: pytest.fail(f'config changed: {a}'))
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'tests'))
  assert launch.use_compilation_cache(str(tmp_path / 'user2')) == str(tmp_path / 'tests')
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR')
  assert launch.use_compilation_cache('') == ''

def test_a_config_by_module_name_is_the_config_file(monkeypatch, capsys):
  """--config=default and --config=configs.default (an installed config) load what
  --config=configs/default.py loads, arguments included; an unknown name is one line."""
  from cxr_jax.cli import launch
  monkeypatch.chdir(ROOT)
  load = lambda c: launch.load_config(['cxr-launch', f'--config={c}'])[0].to_dict()
  by_file = load('configs/default.py:task=findings')
  assert load('default:task=findings') == by_file
  assert load('configs.default:task=findings') == by_file
  assert load('default') != by_file  # the argument reached get_config
  with pytest.raises(SystemExit) as e:
    load('defualt')
  assert e.value.code == ('error: --config=defualt: no such config file, nor config module '
                          '(defualt or configs.defualt)')
