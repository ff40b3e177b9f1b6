"""The plan of one run: pretraining curriculum -> fine-tuning grid -> report.

    run(config, workdir)
      validate the config; lock the workdir (one run at a time); refuse a workdir that
      holds another config's run (unless config.allow_changes accepts the difference);
      open every dataset and split the run reads
      pretrain: the curriculum's stages in order, each from the previous stage's network
                -> <workdir>/pretrain/<stage>/          (cxr_jax.pretraining)
                the 'ssl' regime: its one stage alone, from scratch
                -> <workdir>/pretrain_ssl/<stage>/
                the 'ssl_matched' regime: that stage alone for as many images as the
                whole curriculum -> <workdir>/pretrain_ssl_matched/<stage>/
                alone:<method>, curriculum:<name>, ssl_matched:<name>: the regime
                families of a study of curricula (regimes.regime_plan)
                -> <workdir>/pretrain_alone_<method>/, pretrain_curriculum_<name>/,
                   pretrain_ssl_matched_<name>/
      embeddings (config.explain.umap): each regime's test-split features
                -> <workdir>/embeddings/<init>.npz      (finetuning.save_embeddings)
      evaluate: protocol x init x label fraction x seed, each cell a job
                -> <workdir>/<protocol folder>/<init>/<fraction>/seed<k>/  (cxr_jax.finetuning)
      report:   <workdir>/report.md                     (cxr_jax.report)

Each run also keeps an account of its wall time by job and phase (data, compile, train,
eval, checkpoint, report; `train/timing.py`) in <workdir>/timing.json, its log and its
report, and of each pretraining stage's compute (images, views, FLOPs, wall time;
`train/compute.py`) in <workdir>/<folder>/<stage>/compute.json.

Every job skips itself when its outputs are complete and resumes from its latest
checkpoint when they are not, so re-running the same command after a crash, a kill or a
pre-emption finishes the work without redoing it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections

from cxr_jax import configuration
from cxr_jax import finetuning
from cxr_jax import pretraining
from cxr_jax import regimes
from cxr_jax import report
from cxr_jax import ssl
from cxr_jax import vocab
from cxr_jax.train import compute
from cxr_jax.train import loop
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib
from cxr_jax.train import timing
from cxr_jax.train import workdir as workdir_lib

log = logging.getLogger('cxr_jax')


def run(config: ml_collections.ConfigDict, workdir) -> list[dict]:
  """Runs (or resumes) the whole plan in `workdir`; returns the evaluation results."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  configuration.validate(config)
  with workdir_lib.lock(workdir, active=jax.process_index() == 0):
    return _run(config, workdir)


def _run(config, workdir: Path) -> list[dict]:
  fresh = not (workdir / 'config.json').exists()
  account = timing.start()  # this process start's time by job and phase
  configuration.check_or_write_config(config, workdir)
  keeper = jax.process_index() == 0  # who writes timing.json and the report
  finished = False
  try:
    results = _plan(config, workdir, fresh)
    if keeper:
      timing.write(workdir, account)  # the report shows the account up to the report
      with timing.phase('report'):
        report.write_report(workdir)
    finished = True
    return results
  finally:
    if keeper:
      try:
        totals = timing.write(workdir, account)
        if finished:  # after an error its one-line message is the last word, alone
          timing.log_summary(totals)
      except OSError as e:  # never in place of the error that stopped the run (a full disk)
        log.warning('the time account could not be written: %s', e)


def _plan(config, workdir: Path, fresh: bool) -> list[dict]:
  """`fresh`: this call wrote the workdir's first config.json."""
  data_dir = Path(config.data_dir) if config.data_dir else workdir / 'tfds'
  try:
    with timing.phase('data'):
      configuration.check_data(config, data_dir)
  except Exception:
    if fresh and jax.process_index() == 0:
      # nothing ran under this config: the corrected command must not be refused as a
      # change of the run
      (workdir / 'config.json').unlink(missing_ok=True)
    raise
  mesh = sharding.make_mesh()
  writer = loop.MetricWriter(workdir)
  inits = regimes.inits(config)
  try:
    encoders = pretrained_encoders(config, inits, mesh, writer, workdir, data_dir)
    with timing.phase('data'):
      data = finetuning.EvalData(config.finetune.data, data_dir, config.image_cache)
    programs = finetuning.Programs(config.model, config.finetune, len(data.class_names),
                                   config.eval_batch_size, mesh, multilabel=data.multilabel)
    if config.explain.umap:  # the regimes' test embeddings, for the report's UMAP figure
      with timing.phase('eval'):
        for init in inits:
          finetuning.save_embeddings(config, programs, init, encoders[init], data, workdir)
    results = []
    for protocol in regimes.protocols(config):
      for init in inits:
        for fraction in map(float, config.finetune.label_fractions):
          for seed in finetuning.seeds(protocol, init, fraction, config.finetune.num_seeds):
            # outside its training loop (probes, test scoring, Grad-CAM) a cell evaluates
            cell = f'{vocab.PROTOCOL_FOLDERS[protocol]}/{init}/{fraction:g}/seed{seed}'
            with timing.phase('eval', job=cell):
              results.append(finetuning.finetune_job(
                  config, programs, protocol, init, fraction, seed, encoders[init], data,
                  mesh, writer, workdir))
            _flush_timing(workdir)
  finally:
    writer.close()
  return results


def _flush_timing(workdir: Path):
  """Rewrites timing.json (process 0), so a killed run keeps its finished jobs' account."""
  if jax.process_index() == 0:
    timing.write(workdir)


def pretrained_encoders(config, inits, mesh, writer, workdir: Path, data_dir: Path) -> dict:
  """{init: the encoder it fine-tunes from (`state.encoder_variables`), None for scratch}.
  Each pretraining regime's stages record their compute (`_record_compute`)."""
  imagenet = None
  if 'imagenet' in inits or config.pretrain.init == 'imagenet':
    imagenet = state_lib.load_imagenet_encoder(config.finetune.imagenet_checkpoint,
                                               config.model.name)
  encoders = {'scratch': None, 'imagenet': imagenet}
  counters = {}  # id(config) -> (config, the FLOP counter of its stage list)

  def counter(cfg) -> compute.StageFlops:
    if id(cfg) not in counters:
      counters[id(cfg)] = (cfg, stage_flops(cfg, mesh, workdir, data_dir))
    return counters[id(cfg)][1]

  def pretrain(regime, cfg, indices, folder, flops, **kwargs):
    _record_compute(cfg, indices, folder, flops, workdir, planned=True)
    state = pretraining.run_curriculum(cfg, mesh, writer, workdir, data_dir,
                                       indices, folder=folder, **kwargs)
    total = _record_compute(cfg, indices, folder, flops, workdir)
    log.info('%s pretraining: %d steps, %d images, %d views, %s, %.1f s', regime,
             total['steps'], total['images'], total['views'],
             compute.format_flops(total['flops']), total['wall_s'])
    return state_lib.encoder_variables(state)

  # curricular, ssl, ssl_matched first (as before the families), then the config's order
  fixed = [r for r in ('curricular', 'ssl', 'ssl_matched') if r in inits]
  for regime in fixed + [r for r in inits if r not in fixed and vocab.pretrain_folder(r)]:
    plan = regimes.regime_plan(config, regime)
    cfg = plan.config
    if plan.reference is not None:  # one stage, as many images (or FLOPs) as a curriculum
      stage = cfg.pretrain.stages[plan.indices[0]].name
      with timing.phase('other', job=f'{plan.folder}/{stage}'):
        cfg = regimes.matched_config(cfg, counter(plan.config).stage_total,
                                     reference=plan.reference,
                                     reference_total=counter(plan.reference).stage_total)
    # config.pretrain.init='imagenet' starts every curriculum (not the single stages) from it
    start = (imagenet if config.pretrain.init == 'imagenet' and plan.reference is None
             and regime != 'ssl' else None)
    encoders[regime] = pretrain(regime, cfg, plan.indices, plan.folder,
                                counter(plan.config), imagenet=start)
  return encoders


def stage_flops(config, mesh, workdir: Path, data_dir: Path) -> compute.StageFlops:
  """The FLOP counter of config's stages: each stage's Job is built (monitors off, never
  run) the first time one of its view sizes is counted."""
  quiet = config.copy_and_resolve_references()
  quiet.pretrain.monitor_every = 0  # the monitors would read the labeled data
  return compute.StageFlops(
      build_job=lambda index: pretraining.pretrain_job(quiet, index, None, mesh, workdir,
                                                       data_dir),
      sizes_of=lambda index, steps: pretraining.image_sizes(
          config.pretrain.stages[index].image_size, steps,
          f'config.pretrain.stages[{index}].image_size'),
      key=lambda index: pretraining.flops_key(config, index))


def _views_per_image(config, stage) -> int:
  """Network inputs per image of a stage's method (two views unless the method says)."""
  name = stage.get('method', '') or config.pretrain.method
  return int(getattr(ssl.get_method(name), 'VIEWS_PER_IMAGE', 2))


def _record_compute(config, indices, folder: str, flops: compute.StageFlops,
                    workdir: Path, planned: bool = False) -> dict:
  """Writes <workdir>/<folder>/<stage>/compute.json for the stages `indices` (process 0;
  FLOPs are counted on every process, for the same matched lengths); returns their sum.
  planned: before the stages run, a record only for the stages whose counts need no trace
  of their own (a stage's first step counts itself on CPU: `pretraining.ResizingStep`)."""
  account = timing.write(workdir)['total']['jobs'] if jax.process_index() == 0 else {}
  records = []
  for index in indices:
    stage = config.pretrain.stages[index]
    directory = workdir / folder / stage.name
    job = f'{folder}/{stage.name}'
    old = compute.read_record(directory)
    if old and old.get('key') == flops.key(index):
      flops.seed(index, old['flops_per_step'])
    with timing.phase('other', job=job):
      sizes = flops.sizes_of(index, stage.steps)
      per_step = flops.per_step(index, sizes, trace=not planned)
    if per_step is None:
      continue
    record = compute.stage_record(
        stage.name, folder, stage.steps, stage.batch_size, _views_per_image(config, stage),
        per_step, sizes, flops.key(index), sum(account.get(job, {}).values()))
    if jax.process_index() == 0:
      compute.write_record(directory, record)
    records.append(record)
  return compute.regime_total(records)
