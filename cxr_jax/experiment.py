"""The plan of one run: pretraining curriculum -> fine-tuning grid -> report.

    run(config, workdir)
      pretrain: for each stage of config.pretrain.stages, in order, train the SSL method on
                the stage's data, starting from the previous stage's network
                -> <workdir>/pretrain/<stage>/ (Orbax checkpoints, done.json)
      finetune: for init in config.finetune.inits x label fraction x seed, train a
                classifier, select it on val, evaluate it on test
                -> <workdir>/finetune/<init>/<fraction>/seed<k>/result.json
      report:   <workdir>/report.md

Every job skips itself when its outputs are complete and resumes from its latest
checkpoint when they are not, so re-running the same command after a crash, a kill or a
pre-emption finishes the work without redoing it.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxr_jax import curriculum
from cxr_jax import ssl
from cxr_jax.data import augment
from cxr_jax.data import pipeline
from cxr_jax.data import schema
from cxr_jax.models import build_encoder, heads
from cxr_jax.train import loop
from cxr_jax.train import optim
from cxr_jax.train import sharding

log = logging.getLogger('cxr_jax')

INITS = ('scratch', 'curricular')
STAGE_KEYS = ('name', 'data', 'steps', 'batch_size', 'image_size', 'strength', 'temperature',
              'ema_momentum', 'keep_head')
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


# ----------------------------------------------------------------------------- config

def validate(config: ml_collections.ConfigDict):
  """Checks what a locked ConfigDict cannot: stage entries, names, choices."""
  ssl.get_method(config.pretrain.method)
  names = []
  for i, stage in enumerate(config.pretrain.stages):
    unknown = sorted(set(stage.keys()) - set(STAGE_KEYS))
    if unknown:
      raise ValueError(f'config.pretrain.stages[{i}]: unknown key(s) {unknown}; '
                       f'a stage has {list(STAGE_KEYS)}')
    missing = sorted(set(STAGE_KEYS) - set(stage.keys()))
    if missing:
      raise ValueError(f'config.pretrain.stages[{i}]: missing key(s) {missing}')
    if not _NAME.match(stage.name):
      raise ValueError(f'config.pretrain.stages[{i}].name={stage.name!r}: use letters, digits, _ . -')
    if stage.steps <= 0:
      raise ValueError(f'config.pretrain.stages[{i}].steps must be > 0, got {stage.steps}')
    names.append(stage.name)
  if len(set(names)) != len(names):
    raise ValueError(f'config.pretrain.stages: stage names must be unique, got {names}')
  for init in _inits(config):
    if init not in INITS:
      raise ValueError(f'config.finetune.inits: unknown init {init!r}; choose from {INITS}')
    if init == 'curricular' and not names:
      raise ValueError('config.finetune.inits has "curricular" but config.pretrain.stages is empty')


def _inits(config):
  return [s.strip() for s in config.finetune.inits.split(',') if s.strip()]


def _flatten(value, prefix=''):
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  if isinstance(value, (list, tuple)):
    out = {}
    for i, v in enumerate(value):
      out.update(_flatten(v, f'{prefix[:-1]}[{i}].'))
    return out
  return {prefix[:-1]: value}


def check_or_write_config(config: ml_collections.ConfigDict, workdir: Path):
  """Writes <workdir>/config.json, or refuses a workdir that holds another config's run."""
  path = workdir / 'config.json'
  current = json.loads(config.to_json_best_effort())
  if path.exists():
    saved = json.loads(path.read_text())
    if saved != current:
      a, b = _flatten(saved), _flatten(current)
      diff = [f'{k}: {a.get(k, "<absent>")!r} -> {b.get(k, "<absent>")!r}'
              for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
      raise ValueError(
          f'{workdir} holds a run of a different config ({path}); differences:\n  '
          + '\n  '.join(diff[:20]) + '\nUse a new --workdir, or the same config to resume.')
    return
  if jax.process_index() == 0:
    path.write_text(json.dumps(current, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------- pretraining

def _model_encoder(config):
  m = config.model
  return build_encoder(m.name, width=m.width, stem=m.stem, dtype=jnp.dtype(m.dtype))


def _init_key(seed):
  # parameter initialisation only: the 'rbg' generator compiles a ResNet's init in seconds
  # where the default threefry takes tens of seconds on CPU
  return jax.random.key(seed, impl='rbg')


def _init(model, rng, dummy):
  return jax.jit(model.init, static_argnames='train')(rng, dummy, train=False)


def _merge(fresh, previous):
  """`fresh` with every subtree that `previous` also has (same shapes) taken from it."""
  if isinstance(fresh, dict):
    return {k: (_merge(v, previous[k]) if k in previous else v) for k, v in fresh.items()}
  if np.shape(previous) != np.shape(fresh):
    return fresh
  return jnp.asarray(previous, dtype=fresh.dtype)


def _pretrain_step(model, method, mcfg, tx, schedules, image_size):
  def step(state, batch):
    t = state.step
    hp = {name: jnp.asarray(fn(t), jnp.float32) for name, fn in schedules.items()}
    rng = jax.random.fold_in(state.rng, t)
    images = batch['image'].astype(jnp.float32) / 255.0
    view1, view2 = augment.two_views(rng, images, hp['strength'], image_size)

    def loss_of(params):
      return method.loss_fn(model, params, state.batch_stats, state.extra, view1, view2, hp, mcfg)

    (loss, (batch_stats, metrics, features)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = method.update_extra(state.extra, params, batch_stats, hp, mcfg,
                                dict(metrics, features=features))
    # only scalars are logged (MoCo's metrics also carry its keys for the queue)
    metrics = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
    metrics = dict(metrics, loss=loss, strength=hp['strength'], temperature=hp['temperature'],
                   lr=hp['lr'])
    return state.replace(step=t + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, extra=extra), metrics
  return step


def pretrain_stage(config, index: int, previous, mesh, writer, workdir: Path, data_dir: Path):
  """Trains stage `index` of the curriculum; returns its final {'params', 'batch_stats'}."""
  stage = config.pretrain.stages[index]
  key = f'config.pretrain.stages[{index}]'
  directory = workdir / 'pretrain' / stage.name
  done = directory / 'done.json'
  if done.exists():
    log.info('pretrain/%s: already done, skipping', stage.name)
    state = loop.restore_params(directory)
    return {'params': state['params'], 'batch_stats': state['batch_stats']}

  method_name = config.pretrain.method
  method = ssl.get_method(method_name)
  mcfg = config.pretrain[method_name]
  model = method.build_model(_model_encoder(config), mcfg)
  builder = pipeline.get_builder(stage.data, data_dir, key=f'{key}.data')
  source = pipeline.get_source(builder, stage.data.split, key=f'{key}.data.split')
  batch_size = pipeline.per_host_batch(stage.batch_size, f'{key}.batch_size')
  tx, lr_schedule = optim.make_optimizer(config.pretrain.optimizer, stage.steps, stage.batch_size)
  # ema_momentum of kind 'method' leaves the rate to the method's own rule (BYOL's cosine)
  schedules = {
      name: curriculum.make_schedule(stage[name], stage.steps, f'{key}.{name}')
      for name in ('strength', 'temperature', 'ema_momentum')
      if not (name == 'ema_momentum' and stage[name].kind == 'method')}
  schedules['progress'] = lambda t: t / stage.steps
  schedules['lr'] = lr_schedule
  channels = builder.info.features['image'].shape[-1]

  def init_state():
    rng = jax.random.fold_in(_init_key(config.seed), index)
    dummy = jnp.zeros((2, stage.image_size, stage.image_size, channels), jnp.float32)
    variables = _init(model, rng, dummy)
    params, batch_stats = variables['params'], variables['batch_stats']
    if previous is not None:
      if stage.keep_head:
        params, batch_stats = _merge(params, previous['params']), _merge(batch_stats, previous['batch_stats'])
      else:  # only the encoder carries over; heads start afresh
        params = dict(params, encoder=_merge(params['encoder'], previous['params']['encoder']))
        batch_stats = dict(batch_stats, encoder=_merge(batch_stats['encoder'],
                                                         previous['batch_stats']['encoder']))
    state = loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), extra=method.init_extra(params, batch_stats, mcfg),
        rng=loop.fresh_rng(config.seed * 1000 + index))
    return sharding.replicate(state, mesh)

  step = jax.jit(_pretrain_step(model, method, mcfg, tx, schedules, stage.image_size),
                 donate_argnums=0, out_shardings=sharding.replicated(mesh))
  loader = pipeline.make_loader(source, batch_size=batch_size, seed=config.seed * 1000 + index,
                                fields=('image',), worker_count=config.worker_count)
  monitor = (make_monitor(config, model, stage.image_size, mesh, data_dir)
             if config.pretrain.monitor_every else None)
  job = loop.Job(name=f'pretrain/{stage.name}', directory=directory, num_steps=stage.steps,
                 init_state=init_state, train_step=step, loader=loader, mesh=mesh,
                 checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                 eval_every=config.pretrain.monitor_every, evaluate=monitor)
  state = loop.run_job(job, writer)
  final = loop.to_numpy({'params': state.params, 'batch_stats': state.batch_stats})
  if jax.process_index() == 0:
    done.write_text(json.dumps({'stage': stage.name, 'steps': stage.steps}))
  return final


# ----------------------------------------------------------------------------- fine-tuning

def _finetune_step(model, tx, image_size, strength):
  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    images = batch['image'].astype(jnp.float32) / 255.0
    views = augment.augment(rng, images, strength, image_size)

    def loss_of(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    views, train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), {'loss': loss}
  return step


def batched_apply(fn, mesh, batch_size: int):
  """Wraps a jit-compiled fn(variables, images [B,H,W,C] uint8) -> [B, ...] into a function of
  a whole numpy array, run in fixed-size, batch-sharded batches (one compilation)."""
  from jax.experimental import multihost_utils

  def apply(variables, images):
    out = []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      n = len(chunk)
      if n < batch_size:  # pad to the fixed batch shape
        chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
      local = chunk.reshape((jax.process_count(), -1) + chunk.shape[1:])[jax.process_index()]
      result = fn(variables, sharding.to_global({'x': local}, mesh)['x'])
      out.append(np.asarray(multihost_utils.process_allgather(result, tiled=True))[:n])
    return np.concatenate(out)
  return apply


def make_predict(model, image_size, mesh, batch_size):
  """predict(variables, images uint8 [N,H,W,C]) -> class probabilities [N,K] (numpy)."""
  @jax.jit
  def probs(variables, images):
    x = augment.resize(images.astype(jnp.float32) / 255.0, image_size)
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)
  return batched_apply(probs, mesh, batch_size)


def make_monitor(config, model, image_size, mesh, data_dir):
  """Online monitors of a pretraining stage on the labeled data of config.finetune.data:
  weighted kNN (k=20, T=0.07, cosine; Wu et al. 2018) and a logistic-regression probe on the
  encoder's frozen (stop-gradient) features, fit on the train split, scored on val.

  The probe is refit at each monitoring step rather than trained inside the SSL step, since
  the pretraining data is unlabeled by construction."""
  from cxr_jax.eval import metrics as M
  from cxr_jax.eval import probes
  ft = config.finetune
  builder = pipeline.get_builder(ft.data, data_dir, key='config.finetune.data')
  names = schema.class_names(builder)
  bank = pipeline.read_all(pipeline.get_source(builder, ft.data.train_split), ('image', 'label'))
  query = pipeline.read_all(pipeline.get_source(builder, ft.data.val_split), ('image', 'label'))

  @jax.jit
  def features(variables, images):
    x = augment.resize(images.astype(jnp.float32) / 255.0, image_size)
    return model.apply(variables, x, train=False)['features']
  extract = batched_apply(features, mesh, config.eval_batch_size)

  def evaluate(state):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    fb, fq = extract(variables, bank['image']), extract(variables, query['image'])
    knn = np.asarray(probes.knn_predict(fb, bank['label'], fq, len(names), k=20, temperature=0.07))
    knn_metrics = M.classification_metrics(query['label'], knn, names)
    probe = probes.linear_probe_fit(fb, bank['label'], len(names))
    linear = np.asarray(probes.linear_probe_predict(probe, fq))
    return state, {'monitor/knn_acc': knn_metrics['accuracy'],
                   'monitor/knn_auroc': knn_metrics['auroc'],
                   'monitor/linear_acc': float(np.mean(linear.argmax(-1) == query['label']))}
  return evaluate


def _selection_score(metrics):
  score = metrics.get('auroc', float('nan'))
  return -metrics['loss'] if not np.isfinite(score) else score


def _eval_metrics(labels, probs, class_names):
  from cxr_jax.eval import metrics as M
  out = M.classification_metrics(labels, probs, class_names)
  p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
  out['loss'] = float(-np.mean(np.log(p)))
  return out


_FINETUNE_FNS = {}


def finetune_job(config, init: str, fraction: float, seed: int, encoder_vars, mesh, writer,
                 workdir: Path, data_dir: Path) -> dict:
  """Fine-tunes one (init, label fraction, seed) cell; returns its result dict."""
  ft = config.finetune
  directory = workdir / 'finetune' / init / f'{fraction:g}' / f'seed{seed}'
  result_path = directory / 'result.json'
  if result_path.exists():
    return json.loads(result_path.read_text())
  builder = pipeline.get_builder(ft.data, data_dir, key='config.finetune.data')
  class_names = schema.class_names(builder)
  train = pipeline.get_source(builder, ft.data.train_split, 'config.finetune.data.train_split')
  if fraction < 1.0:
    from cxr_jax.data import splits
    labels = pipeline.read_all(train, ('label',))['label']
    patients = pipeline.read_all(train, ('patient_id',))['patient_id']
    train = pipeline.Subset(train, splits.label_fraction_subset(labels, patients, fraction, seed))
  val = pipeline.read_all(pipeline.get_source(builder, ft.data.val_split,
                                              'config.finetune.data.val_split'), ('image', 'label'))
  test_source = pipeline.get_source(builder, ft.data.test_split, 'config.finetune.data.test_split')
  model = heads.ClassifierModel(encoder=_model_encoder(config), num_classes=len(class_names))
  batch_size = pipeline.per_host_batch(ft.batch_size, 'config.finetune.batch_size')
  tx, _ = optim.make_optimizer(ft.optimizer, ft.steps, ft.batch_size)
  channels = builder.info.features['image'].shape[-1]

  def init_state():
    rng = jax.random.fold_in(_init_key(config.seed), 10_000 + seed)
    dummy = jnp.zeros((2, ft.image_size, ft.image_size, channels), jnp.float32)
    variables = _init(model, rng, dummy)
    params, batch_stats = variables['params'], variables['batch_stats']
    if init == 'curricular':
      params = dict(params, encoder=_merge(params['encoder'], encoder_vars['params']['encoder']))
      batch_stats = dict(batch_stats, encoder=_merge(batch_stats['encoder'],
                                                     encoder_vars['batch_stats']['encoder']))
    copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)  # distinct buffers: params are donated
    extra = {'best_params': copy(params), 'best_batch_stats': copy(batch_stats),
             'best_score': jnp.asarray(-jnp.inf), 'best_step': jnp.zeros((), jnp.int32)}
    state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            batch_stats=batch_stats, opt_state=tx.init(params), extra=extra,
                            rng=loop.fresh_rng(seed))
    return sharding.replicate(state, mesh)

  cache_key = (config.model.to_json(), ft.to_json(), len(class_names))
  if cache_key not in _FINETUNE_FNS:  # one compilation serves every init, fraction and seed
    _FINETUNE_FNS[cache_key] = (
        make_predict(model, ft.image_size, mesh, config.eval_batch_size),
        jax.jit(_finetune_step(model, tx, ft.image_size, ft.strength), donate_argnums=0,
                out_shardings=sharding.replicated(mesh)))
  predict, step = _FINETUNE_FNS[cache_key]

  def evaluate(state):
    probs = predict({'params': state.params, 'batch_stats': state.batch_stats}, val['image'])
    m = _eval_metrics(val['label'], probs, class_names)
    score = _selection_score(m)
    if score > float(state.extra['best_score']):  # model selection on val only
      copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)
      state = state.replace(extra={
          'best_params': copy(state.params), 'best_batch_stats': copy(state.batch_stats),
          'best_score': jnp.asarray(score, jnp.float32), 'best_step': jnp.copy(state.step)})
      state = sharding.replicate(state, mesh)
    return state, {f'val/{k}': v for k, v in m.items() if np.isfinite(v)}

  loader = pipeline.make_loader(train, batch_size=min(batch_size, len(train)), seed=seed,
                                fields=('image', 'label'), worker_count=config.worker_count)
  job = loop.Job(name=f'finetune/{init}/{fraction:g}/seed{seed}', directory=directory,
                 num_steps=ft.steps, init_state=init_state, train_step=step, loader=loader,
                 mesh=mesh, checkpoint_every=config.checkpoint_every,
                 log_every=config.log_every, eval_every=ft.eval_every, evaluate=evaluate)
  state = loop.run_job(job, writer)
  best = {'params': state.extra['best_params'], 'batch_stats': state.extra['best_batch_stats']}
  test = pipeline.read_all(test_source, ('image', 'label', 'patient_id'))
  probs = predict(best, test['image'])
  test_metrics = _eval_metrics(test['label'], probs, class_names)
  result = {'init': init, 'label_fraction': fraction, 'seed': seed,
            'num_train': len(train), 'best_step': int(state.extra['best_step']),
            'val_score': float(state.extra['best_score']), 'class_names': list(class_names),
            'test': test_metrics}
  if jax.process_index() == 0:
    np.savez_compressed(directory / 'test_predictions.npz', probs=probs, labels=test['label'],
                        patient_id=test['patient_id'])
    writer.write(job.name, ft.steps, {f'test/{k}': v for k, v in test_metrics.items()
                                      if np.isfinite(v)})
    result_path.write_text(json.dumps(result, indent=2))
  return result


# ----------------------------------------------------------------------------- the plan

def run(config: ml_collections.ConfigDict, workdir) -> list[dict]:
  """Runs (or resumes) the whole plan in `workdir`; returns the fine-tuning results."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  validate(config)
  check_or_write_config(config, workdir)
  data_dir = Path(config.data_dir) if config.data_dir else workdir / 'tfds'
  mesh = sharding.make_mesh()
  writer = loop.MetricWriter(workdir)
  try:
    encoder_vars = None
    for index in range(len(config.pretrain.stages)):
      encoder_vars = pretrain_stage(config, index, encoder_vars, mesh, writer, workdir, data_dir)
    results = []
    for init in _inits(config):
      for fraction in config.finetune.label_fractions:
        for seed in range(config.finetune.num_seeds):
          results.append(finetune_job(config, init, float(fraction), seed, encoder_vars, mesh,
                                      writer, workdir, data_dir))
  finally:
    writer.close()
  if jax.process_index() == 0:
    from cxr_jax import report
    report.write_report(workdir)
  return results
