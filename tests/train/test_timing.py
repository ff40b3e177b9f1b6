"""The time account: exclusive phases that add up to the wall time, compilation from JAX's
events counted once when nested, sessions per process start. A tiny run's timing.json,
compute.json and report: tests/test_embed.py (its finished run)."""
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.train import timing


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
