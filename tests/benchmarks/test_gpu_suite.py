"""benchmarks/gpu_suite: the whole suite, tiny, on the CPU (so it cannot rot), and what
the parent writes for a part cut off by its limit."""
import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_suite
from tests.conftest import ROOT, subprocess_env


def _final(rows):
  final = {}
  for r in rows:
    if r['status'] not in ('started', 'partial'):
      final[(r['part'], r['contender'])] = r
  return final


def test_small_suite_returns_a_table_with_every_part(tmp_path, jax_cache_dir):
  out = tmp_path / 'suite'
  subprocess.run(['bash', 'benchmarks/gpu_suite.sh', '--small', str(out), '--budget=400'],
                 cwd=ROOT, env=subprocess_env(jax_cache_dir), check=True, timeout=600)
  final = _final(gpu_suite.read_rows(out / 'rows.jsonl'))
  has_torch = subprocess.run([sys.executable, '-c', 'import torch'],
                             capture_output=True).returncode == 0
  for part in gpu_suite.SMALL_PARTS:
    for contender in part.contenders:
      row = final[(part.name, contender)]
      if contender in gpu_suite.TORCH and not has_torch:
        assert row['status'] == 'skipped', row
      elif contender == 'torch.compile':  # a compile that does not finish is a result
        assert row['status'] in ('ok', 'timeout'), row
      else:
        assert row['status'] == 'ok', row
  ours = final[('ours_r50_simclr', 'ours')]
  assert ours['views_per_s'] == pytest.approx(2 * ours['batch'] / (ours['step_ms'] / 1e3))
  assert ours['flops_per_step'] > 0 and ours['compile_s'] > 0
  train = final[('train_r50', 'train loop')]
  assert train['views_per_s'] > 0 and 0 <= train['loader_wait'] < 1
  assert train['compile_s'] > 0 and train['ckpt_save_s'] > 0 and train['prepare_s'] > 0
  assert final[('matmul', 'matmul')]['matmul_flops_per_s'] > 0
  table = (out / 'table.md').read_text()
  for part in gpu_suite.SMALL_PARTS:
    assert f'| {part.name} |' in table or part.name == 'matmul'
  assert 'float32 matmul rate measured in this run (the MFU denominator): ' in table


def test_rows_for_what_a_killed_part_did_not_measure_and_the_table(tmp_path):
  jsonl = tmp_path / 'rows.jsonl'
  now = time.time()
  base = dict(model='resnet50', method='simclr', res=224, batch=128, width=1.0, dtype='bf16')
  rows = [
      dict(base, part='matmul', contender='matmul', status='ok', matmul_flops_per_s=500e12),
      dict(base, part='ours_r50_simclr', contender='ours', status='ok', step_ms=40.0,
           views_per_s=6400.0, flops_per_step=6e12, compile_s=25.0),
      dict(base, part='torch_eager_r50', contender='torch eager', status='ok', step_ms=64.0,
           views_per_s=4000.0, compile_s=3.0),
      dict(base, part='torch_compile_r50', contender='torch.compile', status='started',
           started_at=now - 100),
  ]
  jsonl.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  parts = [p for p in gpu_suite.GPU_PARTS if p.name in ('torch_compile_r50', 'r18_simclr')]
  gpu_suite._fill_missing(jsonl, parts, 'limit', 120, now)
  final = _final(gpu_suite.read_rows(jsonl))
  assert final[('torch_compile_r50', 'torch.compile')]['note'] == 'did not compile in 100 s'
  assert final[('r18_simclr', 'ours')]['status'] == 'timeout'
  assert final[('r18_simclr', 'ours')]['note'].startswith('not reached')
  table = gpu_suite.make_table(gpu_suite.read_rows(jsonl), 470, 400)
  # ours: 6e12 FLOP / 40 ms = 150 TFLOP/s = 30% of 500; torch eager: the same count, 64 ms
  assert '| 150.0 | 30.0% |' in table
  assert '| 93.8 | 18.8% | 1.60 |' in table  # 6e12 / 64 ms; ours / torch 6400 / 4000
  assert 'did not compile in 100 s' in table


def test_a_part_past_its_limit_is_killed_with_its_process_group(tmp_path):
  part = next(p for p in gpu_suite.SMALL_PARTS if p.name == 'matmul')
  t0 = time.perf_counter()
  status = gpu_suite._run_group([part], True, tmp_path, tmp_path / 'rows.jsonl', limit=0.5)
  assert status == 'limit'
  assert time.perf_counter() - t0 < 15


def test_a_row_after_a_line_cut_by_a_kill_is_kept(tmp_path):
  jsonl = tmp_path / 'rows.jsonl'
  jsonl.write_text('{"part": "matmul", "contender": "matmul", "status": "ok"}\n{"part": "ma')
  gpu_suite._write_row(jsonl, {'part': 'x', 'contender': 'y', 'status': 'timeout'})
  assert [r['part'] for r in gpu_suite.read_rows(jsonl)] == ['matmul', 'x']
