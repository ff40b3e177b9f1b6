"""The report's compute column per regime, its unequal-compute flag, and the time table,
from hand-written compute.json and timing.json files."""
import json
import types

from cxr_jax.report import accounting


def _stage(workdir, folder, stage, steps, flops_per_step, wall):
  d = workdir / folder / stage
  d.mkdir(parents=True)
  (d / 'compute.json').write_text(json.dumps({
      'stage': stage, 'steps': steps, 'images': steps * 128, 'views': steps * 256,
      'flops': steps * flops_per_step, 'wall_s': wall}))


def _run(workdir, inits):
  return types.SimpleNamespace(workdir=workdir,
                               groups={('finetune', i, 1.0): [] for i in inits})


def test_the_compute_table_sums_stages_and_flags_unequal_flops(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps(
      {'pretrain': {'stages': [{'name': 'low_res'}, {'name': 'full_res'}]}}))
  # the demo's plan: 120 steps at 48 px (0.5625 of a 64 px step), 150 at 64 px;
  # ssl_matched by images: 270 steps at 64 px, 24% more FLOPs than the curriculum
  _stage(tmp_path, 'pretrain', 'low_res', 120, 0.5625e9, 10.0)
  _stage(tmp_path, 'pretrain', 'full_res', 150, 1e9, 20.0)
  _stage(tmp_path, 'pretrain_ssl_matched', 'full_res', 270, 1e9, 40.0)
  _stage(tmp_path, 'pretrain_ssl', 'full_res', 150, 1e9, 15.0)
  computes = accounting.regime_compute(tmp_path)
  assert computes['curricular']['stages'] == ['low_res', 'full_res']  # the config's order
  assert computes['curricular']['flops'] == 120 * 0.5625e9 + 150e9
  assert computes['curricular']['images'] == 270 * 128

  lines = accounting.compute_section(_run(tmp_path, ['scratch', 'ssl_matched', 'curricular']))
  text = '\n'.join(lines)
  assert '| curricular | low_res, full_res | 270 | 34,560 | 69,120 | 218 GFLOP | 30 s |' in text
  assert '| ssl_matched | full_res | 270 | 34,560 | 69,120 | 270 GFLOP | 40 s |' in text
  ratio = 270 / 217.5
  assert f'ssl_matched used {ratio:.2f}× the FLOPs of curricular' in text  # 1.24×
  assert 'Unequal compute' in text
  # ssl was not fine-tuned: no pair with it; within 5%: no flag
  assert 'of ssl' not in text and 'ssl used' not in text
  # matched by FLOPs: 218 steps at 64 px, within 5% of the curriculum's 217.5
  (tmp_path / 'pretrain_ssl_matched' / 'full_res' / 'compute.json').write_text(json.dumps({
      'stage': 'full_res', 'steps': 218, 'images': 218 * 128, 'views': 218 * 256,
      'flops': 218e9, 'wall_s': 30.0}))
  assert 'Unequal compute' not in '\n'.join(
      accounting.compute_section(_run(tmp_path, ['ssl_matched', 'curricular'])))


def test_the_time_table_has_a_row_per_job_and_the_run_total(tmp_path):
  jobs = {'pretrain/a': {'compile': 3.0, 'train': 2.0}, '': {'data': 1.0, 'report': 0.5}}
  (tmp_path / 'timing.json').write_text(json.dumps({'total': {
      'wall_s': 6.5, 'sessions': 2, 'jobs': jobs,
      'phases': {'data': 1.0, 'compile': 3.0, 'train': 2.0, 'report': 0.5}}}))
  text = '\n'.join(accounting.timing_lines(tmp_path))
  assert '| job | data | compile | train | report | total |' in text
  assert '| `pretrain/a` | 0.0 | 3.0 | 2.0 | 0.0 | 5.0 |' in text
  assert '| (outside jobs) | 1.0 | 0.0 | 0.0 | 0.5 | 1.5 |' in text
  assert '| **run** | 1.0 | 3.0 | 2.0 | 0.5 | 6.5 |' in text
  assert 'over 2 process start(s), 6.5 s in all; compilation 46% of it' in text
  assert accounting.timing_lines(tmp_path / 'nothing') == []
