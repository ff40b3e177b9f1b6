"""The time account: exclusive phases that add up to the wall time, compilation from JAX's
events counted once when nested, sessions per process start, and a tiny run's timing.json,
compute.json and report."""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax import experiment
from cxr_jax.train import timing
from tests.test_experiment import tiny_config


def test_phases_are_exclusive_and_nested_compile_spans_count_once():
  account = timing.start()
  with timing.phase('train', job='j'):
    time.sleep(0.2)
    with timing.phase('checkpoint'):  # the enclosing phase's job
      time.sleep(0.1)
    now = time.time()
    account.compiled(now - 0.06, now - 0.02)   # a nested trace, reported first
    account.compiled(now - 0.1, now)           # its enclosing compilation: 0.1 s in all
    account.compiled(now - 0.1, now)           # the same span again adds nothing
  snap = account.snapshot()
  j = snap['jobs']['j']
  assert j['compile'] == pytest.approx(0.1, abs=1e-6)
  assert j['checkpoint'] == pytest.approx(0.1, abs=0.05)
  assert j['train'] == pytest.approx(0.1, abs=0.05)  # 0.2 s less the 0.1 s compilation
  assert sum(snap['phases'].values()) == pytest.approx(snap['wall_s'], rel=1e-6)


def test_jax_compilation_is_charged_to_the_phase_s_job():
  timing.start()
  with timing.phase('eval', job='k'):
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x.sum())  # a new program: traced, compiled
    f(np.arange(7.0)).block_until_ready()
  phases = timing.job_seconds('k')
  assert phases['compile'] > 0
  assert phases['eval'] >= 0


def test_each_process_start_adds_a_session_and_the_total_sums_them(tmp_path):
  first = timing.start()
  with timing.phase('train', job='a'):
    time.sleep(0.05)
  timing.write(tmp_path, first)
  timing.write(tmp_path, first)  # rewritten after each job: the same session, updated
  second = timing.start()  # a resumed run
  with timing.phase('data', job='a'):
    time.sleep(0.05)
  content = timing.write(tmp_path, second)
  assert content == json.loads((tmp_path / 'timing.json').read_text())
  sessions = content['sessions']
  assert [s['id'] for s in sessions] == [first.id, second.id]
  total = content['total']
  assert total['sessions'] == 2
  assert total['wall_s'] == pytest.approx(sum(s['wall_s'] for s in sessions))
  assert total['jobs']['a']['train'] == pytest.approx(sessions[0]['jobs']['a']['train'])
  assert total['jobs']['a']['data'] == pytest.approx(sessions[1]['jobs']['a']['data'])
  for p in timing.PHASES:
    assert total['phases'][p] == pytest.approx(sum(s['phases'].get(p, 0.0) for s in sessions))


@pytest.fixture(scope='module')
def accounted_run(tmp_path_factory, tiny_data_dir):
  """tests/test_embed.py's tiny run (one 6-step stage, 4-step fine-tuning; the same
  programs, compiled once per test session), the curricular regime only."""
  workdir = tmp_path_factory.mktemp('timing_run')
  config = tiny_config(tiny_data_dir)
  config.pretrain.stages = config.pretrain.stages[:1]
  config.finetune.inits, config.finetune.protocols = 'curricular', 'finetune'
  config.finetune.steps, config.finetune.eval_every, config.finetune.batch_size = 4, 2, 8
  config.finetune.num_seeds, config.finetune.image_size, config.eval_batch_size = 1, 32, 16
  start = time.perf_counter()
  experiment.run(config, workdir)
  return workdir, time.perf_counter() - start


def test_a_run_accounts_for_its_wall_time_by_job_and_phase(accounted_run):
  workdir, wall = accounted_run
  [session] = json.loads((workdir / 'timing.json').read_text())['sessions']
  assert session['wall_s'] <= wall
  phases = session['phases']
  assert set(phases) == set(timing.PHASES)
  assert all(v >= 0 for job in session['jobs'].values() for v in job.values())
  assert sum(phases.values()) == pytest.approx(session['wall_s'], rel=1e-3)
  # 'other' (set-up outside the named phases) is a small part
  assert phases['other'] < 0.25 * session['wall_s']
  assert phases['compile'] > 0 and phases['train'] > 0 and phases['checkpoint'] > 0
  assert phases['data'] > 0 and phases['report'] > 0 and phases['eval'] > 0
  jobs = session['jobs']
  assert {'pretrain/low_res', 'finetune/curricular/1/seed0'} <= set(jobs)
  assert jobs['pretrain/low_res']['train'] > 0 and jobs['pretrain/low_res']['compile'] > 0


def test_a_run_records_its_stages_compute_and_reports_both_accounts(accounted_run):
  workdir, _ = accounted_run
  record = json.loads((workdir / 'pretrain/low_res/compute.json').read_text())
  assert record['steps'] == 6 and record['images'] == 6 * 16 and record['views'] == 2 * 6 * 16
  assert record['steps_per_size'] == {'32': 6}
  assert record['flops'] == pytest.approx(6 * record['flops_per_step']['32'])
  assert record['flops_per_step']['32'] > 0
  # the stage's time in the account when the record was written (after the stage)
  total = json.loads((workdir / 'timing.json').read_text())['total']
  assert 0 < record['wall_s'] == pytest.approx(
      sum(total['jobs']['pretrain/low_res'].values()), rel=1e-3)
  report = (workdir / 'report.md').read_text()
  assert '## Time by phase' in report and '| `pretrain/low_res` |' in report
  assert '| **run** |' in report
  assert '## Pretraining compute per regime' in report
  assert '| curricular | low_res | 6 | 96 | 192 |' in report
  assert 'Unequal compute' not in report  # one pretrained regime
