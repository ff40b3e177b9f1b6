"""Orders a curriculum of pretext tasks: each candidate trained alone for an equal, short
budget, scored on val, and the stage list written by a documented rule.

    python -m cxr_jax.cli.order_tasks --config=configs/default.py[:arg] --workdir=W \\
        --tasks=rotation,jigsaw,simclr [--steps=N] [--rule=ascending] [--score=mean] \\
        [--stage=NAME] [--config.a.b=v ...]

Candidates. Each task (a name of `cxr_jax.ssl.METHODS`) is a one-stage pretraining with
that method: a copy of the config's SSL stage (`--stage`, else config.pretrain.ssl_stage,
else the last stage) with its data, batch size, view size and schedules, `--steps` steps
(default: the stage's own), from the same initialisation (config.pretrain.init). Every
candidate gets the same steps and batch, so the same images seen. The method is set both
globally (config.pretrain.method) and, where the config has per-stage methods, on the
stage (config.pretrain.stages[0].method); its settings are config.pretrain.<task>. Each
candidate is an ordinary resumable run of the project's pretraining
(`pretraining.run_curriculum`) in W/<task>/ (config.json, pretrain/<stage>/ckpt/,
metrics.jsonl), so re-running the command finishes an interrupted ordering and a
finished candidate costs nothing; the datasets are prepared once, in W/tfds/ when
config.data_dir is ''.

Scores, val split only (the test split is never scored). The stage's online monitors
(`pretraining.make_monitor`: the frozen encoder's features of config.finetune.data, train
split as kNN bank and probe training set, val as queries) are forced on at the last step
(config.pretrain.monitor_every = steps when it is 0), and the scores are what they log
there in W/<task>/metrics.jsonl: `monitor/knn_auroc` and `monitor/linear_auroc` (for
multi-label tasks the mean AUROC over the findings). Where the monitor line has no linear
AUROC (a candidate trained before single-label monitors logged it, 2026-12-04), the same
probe (`eval.probes.linear_probe_fit` on the same features) is fit here on the final
encoder and scored by `eval.metrics.classification_metrics` on val. Each candidate's scores and budget
are kept in W/<task>/candidate.json.

Rules (`RULES`; `--score`: knn, linear, or mean = their mean): every rule ranks the
candidates by score, best first, ties broken by task name (alphabetical); a candidate
that failed or whose score is NaN is left out (and listed with its reason).
  ascending   the rank reversed: the best-transferring task last, right before fine-tuning
              (the default; docs/methods.md, "Ordering a task curriculum", says why)
  descending  the rank: the best task first
  best_only   the best task alone

Writes W/order.md (each task's scores, budget and place), W/order.json (the same, for
programs) and W/curriculum.txt (the stage list as `--config.pretrain.stages[i].method=...`
overrides, one per stage, and as a Python snippet for a config file). A candidate that
fails is reported with its one-line error and left out; the command exits non-zero when
every candidate failed.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cxr_jax import configuration
from cxr_jax import platform
from cxr_jax import pretraining
from cxr_jax import regimes
from cxr_jax import ssl
from cxr_jax import vocab
from cxr_jax.cli import launch
from cxr_jax.data import pipeline
from cxr_jax.data import schema
from cxr_jax.eval import metrics as M
from cxr_jax.eval import probes
from cxr_jax.train import inference
from cxr_jax.train import loop
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib
from cxr_jax.train import workdir as workdir_lib

# the pretraining folder of a candidate's run (its one stage: W/<task>/pretrain/<stage>/)
FOLDER = 'pretrain'
SCORES = {'knn': 'kNN AUROC', 'linear': 'linear-probe AUROC',
          'mean': 'mean of kNN and linear-probe AUROC'}
RULE_TEXT = {
    'ascending': 'ascending by score: the best-transferring task last, right before '
                 'fine-tuning',
    'descending': 'descending by score: the best-transferring task first',
    'best_only': 'the best-transferring task alone',
}


# ---------------------------------------------------------------------------- the rules

def rank(scores: dict[str, float | None]) -> list[str]:
  """Tasks with a finite score, best first; ties by task name (alphabetical).
  A score of None or NaN leaves its task out."""
  finite = {t: float(s) for t, s in scores.items() if s is not None and math.isfinite(s)}
  return sorted(finite, key=lambda t: (-finite[t], t))


def ascending(scores):
  """The strongest task last (the rank reversed: tied tasks in reverse name order)."""
  return rank(scores)[::-1]


def descending(scores):
  """The strongest task first."""
  return rank(scores)


def best_only(scores):
  """The strongest task alone ([] when no task has a finite score)."""
  return rank(scores)[:1]


RULES = {'ascending': ascending, 'descending': descending, 'best_only': best_only}


def score_of(row: dict, score: str) -> float:
  """The score `score` ('knn', 'linear', 'mean') of a candidate's row; NaN when missing
  (the mean is NaN when either is)."""
  if score not in SCORES:
    raise ValueError(f'--score={score!r}; choose from {sorted(SCORES)}')
  get = lambda key: float('nan') if row.get(key) is None else float(row[key])
  if score == 'mean':
    return (get('knn_auroc') + get('linear_auroc')) / 2
  return get(f'{score}_auroc')


def choose(rows: dict[str, dict], rule: str, score: str) -> tuple[list[str], dict[str, str]]:
  """(the curriculum's tasks in stage order, {left-out task: why}) of the candidates'
  rows ({task: {'knn_auroc', 'linear_auroc'} or {'error'}})."""
  if rule not in RULES:
    raise ValueError(f'--rule={rule!r}; choose from {sorted(RULES)}')
  left_out = {t: f'failed: {r["error"]}' for t, r in rows.items() if r.get('error')}
  scores = {t: score_of(r, score) for t, r in rows.items() if t not in left_out}
  left_out.update({t: f'{SCORES[score]} is NaN' for t, s in scores.items()
                   if not math.isfinite(s)})
  chosen = RULES[rule](scores)
  # best_only: the others are scored but not chosen (not left out for a fault)
  return chosen, left_out


# ------------------------------------------------------------------------------ config

def parse_config(argv: list[str]) -> ml_collections.ConfigDict:
  """The config of `['prog', '--config=FILE[:ARG]', '--config.a.b=v', ...]`, loaded and
  overridden exactly as the launcher does (`launch.load_config`, then ml_collections' flag
  parser over a private flag registry)."""
  config, rest = launch.load_config(list(argv))
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict('config', config, flag_values=values, lock_config=True,
                                  sys_argv=rest)
  values(rest)
  return values.config


def candidate_config(config, task: str, stage_index: int, steps: int | None,
                     data_dir: str) -> ml_collections.ConfigDict:
  """The one-stage config of candidate `task`: stage `stage_index` of `config` alone,
  `steps` steps (None: its own), method `task`, monitors on at least at its last step."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    stage = c.pretrain.stages[stage_index]
    if steps is not None:
      stage.steps = steps
    if 'method' in stage:  # per-stage methods: the stage's own method wins over the global
      stage.method = task
    c.pretrain.method = task
    c.pretrain.stages = [stage]
    c.pretrain.ssl_stage = ''
    if not c.pretrain.monitor_every:  # the scores are the monitors' at the last step
      c.pretrain.monitor_every = stage.steps
    c.data_dir = data_dir
  return c


# ------------------------------------------------------------------------- a candidate

def _final_monitor(metrics_path: Path, job: str, step: int) -> dict:
  """The last metrics.jsonl line of `job` at `step` that holds monitor values."""
  found = None
  if metrics_path.exists():
    for line in metrics_path.read_text().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line torn by a killed run
        continue
      if row.get('job') == job and row.get('step') == step and 'monitor/knn_auroc' in row:
        found = row
  if found is None:
    raise RuntimeError(f'{metrics_path} has no monitor line of {job} at step {step}')
  return found


def _linear_probe_auroc(config, task: str, state, mesh, data_dir: Path) -> float:
  """Val AUROC of the monitors' logistic-regression probe on the final encoder's frozen
  features (train split fit, val scored), for a candidate whose monitor logged only the
  probe's accuracy (trained before single-label monitors logged its AUROC)."""
  stage = config.pretrain.stages[0]
  model = ssl.get_method(task).build_model(state_lib.encoder_from_config(config.model),
                                           config.pretrain[task])
  size = int(pretraining.image_sizes(stage.image_size, stage.steps,
                                     'config.pretrain.stages[0].image_size')[-1])
  ft = config.finetune.data
  builder = pipeline.get_builder(ft, data_dir, key='config.finetune.data')
  bank = pipeline.read_all(pipeline.get_source(builder, ft.train_split), ('image', 'label'))
  query = pipeline.read_all(pipeline.get_source(builder, ft.val_split), ('image', 'label'))
  extract = inference.make_features(model, size, mesh, config.eval_batch_size)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  names = schema.class_names(builder)
  probe = probes.linear_probe_fit(extract(variables, bank['image']), bank['label'], len(names))
  linear = np.asarray(probes.linear_probe_predict(probe, extract(variables, query['image'])))
  return float(M.classification_metrics(query['label'], linear, names)['auroc'])


def run_candidate(config, task: str, task_dir: Path, mesh) -> dict:
  """Trains (or resumes, or finds finished) candidate `task` in `task_dir`; returns its
  row: scores, budget, wall time; also written to task_dir/candidate.json."""
  stage = config.pretrain.stages[0]
  ssl.get_method(task)  # an unknown name fails here, naming the known ones
  if task not in config.pretrain:
    raise ValueError(f'config.pretrain has no settings for method {task!r} '
                     f'(config.pretrain.{task})')
  configuration.validate(config)
  task_dir.mkdir(parents=True, exist_ok=True)
  record_path = task_dir / 'candidate.json'
  record = json.loads(record_path.read_text()) if record_path.exists() else {}
  data_dir = Path(config.data_dir)
  job = f'{FOLDER}/{stage.name}'
  with workdir_lib.lock(task_dir, active=jax.process_index() == 0):
    configuration.check_or_write_config(config, task_dir)
    configuration.check_data(config, data_dir)
    imagenet = None
    if config.pretrain.init == 'imagenet':
      imagenet = state_lib.load_imagenet_encoder(config.finetune.imagenet_checkpoint,
                                                 config.model.name)
    saved = loop.saved_steps(task_dir / FOLDER / stage.name)
    trains = not saved or saved[-1] < stage.steps
    writer = loop.MetricWriter(task_dir)
    start = time.time()
    try:
      state = pretraining.run_curriculum(config, mesh, writer, task_dir, data_dir,
                                         folder=FOLDER, imagenet=imagenet)
    finally:
      writer.close()
    seconds = time.time() - start if trains else record.get('seconds', 0.0)
    monitor = _final_monitor(task_dir / 'metrics.jsonl', job, stage.steps)
    linear, source = monitor.get('monitor/linear_auroc'), 'monitor'
    if linear is None:
      if record.get('linear_auroc_source') == 'probe' and not trains:
        linear = record['linear_auroc']
      else:
        linear = _linear_probe_auroc(config, task, state, mesh, data_dir)
      source = 'probe'
  sizes = pretraining.image_sizes(stage.image_size, stage.steps,
                                  'config.pretrain.stages[0].image_size')
  row = dict(task=task, stage=stage.name, steps=int(stage.steps),
             batch_size=int(stage.batch_size), images_seen=int(stage.steps * stage.batch_size),
             image_size=int(sizes[-1]), knn_auroc=float(monitor['monitor/knn_auroc']),
             linear_auroc=float(linear), linear_auroc_source=source,
             seconds=round(seconds, 1))
  if jax.process_index() == 0:
    workdir_lib.write_text(record_path, json.dumps(row, indent=2))
  return row


def run_candidates(config, workdir: Path, tasks: list[str], steps: int | None,
                   stage_name: str = '') -> tuple[dict[str, dict], int]:
  """Runs every candidate (each in workdir/<task>/); returns ({task: row or {'task',
  'error'}}, the index of the stage the candidates copy). A failure is logged with its
  traceback and kept as a one-line error; the others go on."""
  names = [s.name for s in config.pretrain.stages]
  if stage_name and stage_name not in names:
    raise SystemExit(f'error: --stage={stage_name!r} is not a stage of the config; '
                     f'stages: {names}')
  index = (names.index(stage_name) if stage_name
           else regimes.ssl_stage_index(config.pretrain))
  data_dir = str(Path(config.data_dir or workdir / 'tfds').absolute())
  mesh = sharding.make_mesh()
  rows = {}
  for task in tasks:
    print(f'[order_tasks] {task}', flush=True)
    try:
      rows[task] = run_candidate(candidate_config(config, task, index, steps, data_dir),
                                 task, workdir / task, mesh)
    except Exception as e:  # one candidate's fault must not stop the others
      traceback.print_exc()
      message = (str(e).strip().splitlines() or [''])[0]
      rows[task] = dict(task=task, error=f'{type(e).__name__}: {message}'.rstrip(': '))
      print(f'[order_tasks] {task} failed: {rows[task]["error"]}', file=sys.stderr,
            flush=True)
  return rows, index


# ----------------------------------------------------------------------------- outputs

def override_lines(tasks: list[str]) -> list[str]:
  """One `--config.pretrain.stages[i].method=<task>` line per stage, in order."""
  return [f'--config.pretrain.stages[{i}].method={t}' for i, t in enumerate(tasks)]


def config_snippet(tasks: list[str], stage_index: int, stage_name: str) -> str:
  """Python for a config file's get_config (after c.pretrain.stages is set): every stage
  a copy of the stage the candidates trained, with its own method."""
  return '\n'.join([
      f'# the task curriculum: each stage a copy of stage {stage_name!r} (its data, batch,',
      '# view size, steps), trained with its own method (config.pretrain.stages[i].method)',
      f'base = c.pretrain.stages[{stage_index}]',
      'c.pretrain.stages = []',
      f'for task in {tuple(tasks)!r}:',
      '  stage = base.copy_and_resolve_references()',
      '  stage.name = stage.method = task',
      '  c.pretrain.stages.append(stage)',
      "c.pretrain.ssl_stage = ''  # the 'ssl' regime: the last task alone",
  ])


def _fmt(x) -> str:
  return '–' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{x:.3f}'


def write_outputs(workdir: Path, rows: dict[str, dict], rule: str, score: str,
                  stage_index: int, num_stages: int, command: str) -> list[str]:
  """Writes W/order.md, W/order.json and W/curriculum.txt; returns the curriculum."""
  chosen, left_out = choose(rows, rule, score)
  ok = [r for r in rows.values() if not r.get('error')]
  stage_name = ok[0]['stage'] if ok else '?'
  rank_of = {t: i + 1 for i, t in enumerate(rank({t: score_of(r, score)
                                                   for t, r in rows.items()
                                                   if not r.get('error')}))}
  lines = ['# Ordering a task curriculum', '',
           f'`{command}`', '',
           f'Each candidate: stage `{stage_name}` alone with the task as its method, equal '
           'budget (the columns steps, batch, images seen), scored on the **val** split of '
           '`config.finetune.data` by the frozen encoder\'s features (kNN: train split as '
           'the bank; linear probe: fit on train). Rule: '
           f'**{rule}** ({RULE_TEXT[rule]}), score: **{score}** ({SCORES[score]}); ties '
           'broken by task name.', '',
           '| task | kNN AUROC (val) | linear AUROC (val) | score | rank | stage in the '
           'curriculum | steps | batch | images seen | view size | wall time |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for task, r in rows.items():
    if r.get('error'):
      lines.append(f'| {task} | – | – | – | – | failed | – | – | – | – | – |')
      continue
    place = (f'{chosen.index(task) + 1} of {len(chosen)}' if task in chosen else
             'left out' if task in left_out else 'not chosen')
    lines.append(
        f'| {task} | {_fmt(r["knn_auroc"])} | {_fmt(r["linear_auroc"])} | '
        f'{_fmt(score_of(r, score))} | {rank_of.get(task, "–")} | {place} | {r["steps"]} | '
        f'{r["batch_size"]} | {r["images_seen"]} | {r["image_size"]} px | '
        f'{r["seconds"]:.0f} s |')
  lines += ['', 'Curriculum (stage order): ' + (' → '.join(chosen) if chosen else 'none'), '']
  if left_out:
    lines += ['Left out:', ''] + [f'- {t}: {why}' for t, why in left_out.items()] + ['']
  if any(r.get('linear_auroc_source') == 'probe' for r in ok):
    lines += ['Linear AUROC of candidates whose monitor logged only the probe\'s accuracy '
              '(trained by an earlier version): the monitors\' logistic-regression probe '
              'refit on the final encoder.', '']
  lines += ['Wall time: the candidate\'s run (compilation, steps, monitors, checkpoints) '
            'in the invocation that finished it (time before an interruption not counted); not '
            'the refit probe. Curriculum overrides and a config snippet: '
            '`curriculum.txt`.', '']
  workdir_lib.write_text(workdir / 'order.md', '\n'.join(lines))
  workdir_lib.write_text(workdir / 'order.json', json.dumps(dict(
      command=command, rule=rule, score=score, curriculum=chosen, left_out=left_out,
      candidates=rows), indent=2))
  text = [f'# {command}',
          f'# rule {rule} ({RULE_TEXT[rule]}), score {score} ({SCORES[score]}), val split',
          '# stages: ' + (' -> '.join(f'{t} ({_fmt(score_of(rows[t], score))})' for t in chosen)
                          or 'none'), '']
  if chosen:
    stages = lambda n: f'{n} pretraining stage' + ('s' if n != 1 else '')
    text += [f'# As overrides, one per stage, of a config with {stages(len(chosen))} (each '
             'keeps its own data, batch, steps):']
    if len(chosen) != num_stages:
      text += [f'# (this config has {stages(num_stages)}: the snippet below makes '
               f'{len(chosen)})']
    text += override_lines(chosen) + ['', '# As a config-file snippet, in get_config() after '
                                      'c.pretrain.stages is set:',
                                      config_snippet(chosen, stage_index, stage_name)]
  workdir_lib.write_text(workdir / 'curriculum.txt', '\n'.join(text) + '\n')
  return chosen


# -------------------------------------------------------------------------------- main

def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', required=True, help='config file[:arg], as for cxr_jax.cli.launch')
  parser.add_argument('--workdir', required=True, help='the candidates\' runs and the outputs')
  parser.add_argument('--tasks', required=True,
                      help=f'comma-separated candidates among {", ".join(ssl.METHODS)}')
  parser.add_argument('--steps', type=int, default=None,
                      help='steps per candidate (default: the stage\'s own)')
  parser.add_argument('--rule', default='ascending', choices=sorted(RULES))
  parser.add_argument('--score', default='mean', choices=sorted(SCORES))
  parser.add_argument('--stage', default='',
                      help='the stage the candidates copy (default: config.pretrain.ssl_stage, '
                           'else the last)')
  args, extra = parser.parse_known_args(argv)
  unknown = [a for a in extra if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unknown arguments {unknown} (config overrides: --config.x=v)')
  tasks = vocab.comma_list(args.tasks)
  if len(set(tasks)) != len(tasks) or not tasks:
    parser.error(f'--tasks={args.tasks!r}: give each task once')
  unknown = [t for t in tasks if t not in ssl.METHODS]
  if unknown:  # a typo found before hours of the other candidates
    parser.error(f'--tasks: {unknown} are not methods; known: {", ".join(ssl.METHODS)}')
  if args.steps is not None and args.steps < 1:
    parser.error('--steps must be >= 1')
  config = parse_config(['order_tasks', f'--config={args.config}', *extra])
  platform.setup()
  if not jax.config.jax_compilation_cache_dir:  # the candidates share compiled programs
    # the launcher's default cache, so the candidates also reuse a run's compiled programs
    cache = Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'cxr_jax' / 'jax'
    jax.config.update('jax_compilation_cache_dir', str(cache))
    jax.config.update('jax_compilation_cache_max_size', 4 * 2**30)
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and TFDS are chatty below ERROR
  logging.getLogger('cxr_jax').setLevel(logging.INFO)
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  command = ' '.join(['python -m cxr_jax.cli.order_tasks', *argv])
  with workdir_lib.lock(workdir, active=jax.process_index() == 0):
    rows, index = run_candidates(config, workdir, tasks, args.steps, args.stage)
    chosen = (write_outputs(workdir, rows, args.rule, args.score, index,
                            len(config.pretrain.stages), command)
              if jax.process_index() == 0 else [])
  if all(r.get('error') for r in rows.values()):
    raise SystemExit('error: every candidate failed: ' + '; '.join(
        f'{t}: {r["error"]}' for t, r in rows.items()))
  print((workdir / 'order.md').read_text() if jax.process_index() == 0 else '', flush=True)
  return chosen


def run():
  """The console script: `main` with its return value (for callers) left out of the exit
  code."""
  main()


if __name__ == '__main__':
  main()
