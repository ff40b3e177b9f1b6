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

import functools
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

INITS = ('scratch', 'imagenet', 'ssl', 'curricular')
STAGE_KEYS = ('name', 'data', 'steps', 'batch_size', 'image_size', 'strength', 'temperature',
              'ema_momentum', 'keep_head', 'keep_optimizer', 'keep_target')
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
    if init in ('curricular', 'ssl') and not names:
      raise ValueError(f'config.finetune.inits has {init!r} but config.pretrain.stages is empty')
    if init == 'imagenet' and not config.finetune.imagenet_checkpoint:
      raise ValueError('config.finetune.inits has "imagenet" but '
                       'config.finetune.imagenet_checkpoint is empty')
  for protocol in _protocols(config):
    if protocol not in PROTOCOLS:
      raise ValueError(f'config.finetune.protocols: unknown protocol {protocol!r}; '
                       f'choose from {PROTOCOLS}')
  augment_on = config.get('augment_on', 'device')
  if augment_on not in ('device', 'host'):
    raise ValueError(f"config.augment_on must be 'device' or 'host', got {augment_on!r}")
  if augment_on == 'host' and config.curriculum.pacing.kind != 'none':
    raise ValueError("config.augment_on='host' needs config.curriculum.pacing.kind='none' "
                     '(the paced sampler feeds a DataLoader without per-step views)')
  if config.pretrain.init not in ('scratch', 'imagenet'):
    raise ValueError(f"config.pretrain.init must be 'scratch' or 'imagenet', got {config.pretrain.init!r}")
  if 'ssl' in _inits(config):
    _ssl_stage_index(config)


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
  return build_encoder(m.name, width=m.width, stem=m.stem, dtype=jnp.dtype(m.dtype), remat=m.remat)


def _init_key(seed):
  # parameter initialisation only: the 'rbg' generator compiles a ResNet's init in seconds
  # where the default threefry takes tens of seconds on CPU
  return jax.random.key(seed, impl='rbg')


_INIT_SIZE = 32  # ResNets and heads have the same parameters at every input size


@functools.lru_cache(maxsize=None)
def _jit_init(model):
  # one compilation per model config (flax modules hash by config), not one per job
  return jax.jit(model.init, static_argnames='train')


def _init(model, rng, channels: int):
  dummy = jnp.zeros((2, _INIT_SIZE, _INIT_SIZE, channels), jnp.float32)
  return _jit_init(model)(rng, dummy, train=False)


def _merge(fresh, previous):
  """`fresh` with every subtree that `previous` also has (same shapes) taken from it."""
  if isinstance(fresh, dict):
    return {k: (_merge(v, previous[k]) if k in previous else v) for k, v in fresh.items()}
  if np.shape(previous) != np.shape(fresh):
    return fresh
  # a copy: the result is donated to a training step, `previous` may be needed again
  return jnp.array(previous, dtype=fresh.dtype, copy=True)


def _pretrain_step(model, method, mcfg, tx, schedules, image_size):
  def step(state, batch):
    t = state.step
    hp = {name: jnp.asarray(fn(t), jnp.float32) for name, fn in schedules.items()}
    if 'view1' in batch:  # cut on the host (config.augment_on='host')
      view1, view2 = augment.to_float(batch['view1']), augment.to_float(batch['view2'])
    else:
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
                   lr=hp['lr'], image_size=jnp.asarray(image_size, jnp.float32))
    return state.replace(step=t + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, extra=extra), metrics
  return step


def image_sizes(spec, num_steps: int, key: str) -> np.ndarray:
  """[num_steps] view sizes of a stage: its `image_size` schedule rounded to multiples of 8
  (progressive resizing; each distinct size compiles the step once)."""
  fn = curriculum.make_schedule(spec, num_steps, key)
  sizes = np.asarray([float(fn(t)) for t in range(num_steps)])
  sizes = (np.round(sizes / 8) * 8).astype(int)
  if sizes.min() < 8:
    raise ValueError(f'{key}: image sizes must be >= 8 px, got {sizes.min()}')
  return sizes


class _ResizingStep:
  """The stage's step at the view size its schedule gives for the current step: one
  jit-compiled function per distinct size, chosen on the host (no device sync)."""

  def __init__(self, make_step, sizes, mesh):
    self._sizes = sizes
    self._steps = {int(s): jax.jit(make_step(int(s)), donate_argnums=0,
                                   out_shardings=sharding.replicated(mesh))
                   for s in np.unique(sizes)}
    self._t = None

  def __call__(self, state, batch):
    if self._t is None:
      self._t = int(state.step)
    size = int(self._sizes[min(self._t, len(self._sizes) - 1)])
    self._t += 1
    return self._steps[size](state, batch)


def _pretrain_loader(config, stage, source, batch_size, seed, sizes, strength):
  """Uniform shuffling, or the data-difficulty curriculum of config.curriculum; with
  config.augment_on='host', records leave the loader as the step's two views (`sizes`:
  the stage's view size per step, `strength`: its augmentation strength schedule)."""
  spec = config.curriculum.pacing
  if spec.kind == 'none':
    images = source  # a SplitSource (get_source)
    if config.get('image_cache', True):
      images = pipeline.image_cache(source) or source
    views = None
    if config.get('augment_on', 'device') == 'host':
      from cxr_jax.data import host_augment
      strengths = np.asarray([float(strength(t)) for t in range(stage.steps)], np.float32)
      # indices are per process: the process in the seed keeps hosts' draws apart
      views = host_augment.TwoViews(np.asarray(sizes), strengths, batch_size=batch_size,
                                    seed=seed * 1024 + jax.process_index()).map_with_index
    return pipeline.make_loader(images, batch_size=batch_size, seed=seed, fields=('image',),
                                worker_count=config.worker_count,
                                read_threads=config.get('read_threads', 0),
                                map_with_index=views)
  import grain
  from cxr_jax.data import pacing as pacing_lib
  kind = config.curriculum.difficulty
  if kind.startswith('metadata:'):
    column = pipeline.read_all(source, (kind.split(':', 1)[1],))
    difficulty = pacing_lib.metadata_difficulty(next(iter(column.values())))
  else:
    images = pipeline.read_all(source, ('image',))['image']
    difficulty = pacing_lib.image_statistic_difficulty(images, kind)
  sampler = pacing_lib.PacedSampler(
      difficulty, curriculum.make_pacing(spec, stage.steps, 'config.curriculum.pacing'),
      batch_size=stage.batch_size, seed=seed)
  return grain.DataLoader(
      data_source=pipeline.decoding(source, ('image',)), sampler=sampler,
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
      operations=[pipeline.SelectFields(('image',)),
                  grain.transforms.Batch(batch_size, drop_remainder=True)],
      worker_count=config.worker_count)


def _carry_over(fresh, previous, stage):
  """The new stage's starting state: the previous stage's network (the whole model when
  keep_head, else the encoder only), optionally its optimizer state and EMA target."""
  params, batch_stats = fresh.params, fresh.batch_stats
  if stage.keep_head:
    params, batch_stats = _merge(params, previous.params), _merge(batch_stats, previous.batch_stats)
  else:
    params = dict(params, encoder=_merge(params['encoder'], previous.params['encoder']))
    batch_stats = dict(batch_stats, encoder=_merge(batch_stats['encoder'],
                                                     previous.batch_stats['encoder']))
  opt_state = fresh.opt_state
  if stage.keep_optimizer:
    same = jax.tree_util.tree_structure(previous.opt_state) == jax.tree_util.tree_structure(opt_state)
    if not same:
      raise ValueError(f'pretrain stage {stage.name!r}: keep_optimizer=True needs the same '
                       'optimizer state structure as the stage before')
    opt_state = _merge_trees(opt_state, previous.opt_state)
  extra = fresh.extra
  if isinstance(extra, dict) and 'target' in extra:
    if stage.keep_target and isinstance(previous.extra, dict) and 'target' in previous.extra:
      extra = dict(extra, target=_merge(extra['target'], previous.extra['target']))
    else:  # the target starts as a copy of the carried-over online network
      extra = dict(extra, target=_merge(extra['target'], {'params': params, 'batch_stats': batch_stats}))
  return fresh.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, extra=extra)


def _merge_trees(fresh, previous):
  return jax.tree_util.tree_map(
      lambda f, p: jnp.array(p, f.dtype, copy=True) if np.shape(p) == np.shape(f) else f,
      fresh, previous)


def pretrain_job(config, index: int, previous, mesh, workdir: Path, data_dir: Path,
                 folder: str = 'pretrain'):
  """The Job of curriculum stage `index`, starting from `previous` (a TrainState or None)."""
  stage = config.pretrain.stages[index]
  key = f'config.pretrain.stages[{index}]'
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
  sizes = image_sizes(stage.image_size, stage.steps, f'{key}.image_size')
  channels = builder.info.features['image'].shape[-1]

  def init_state():
    rng = jax.random.fold_in(_init_key(config.seed), index)
    variables = _init(model, rng, channels)
    params, batch_stats = variables['params'], variables['batch_stats']
    if index == 0 and config.pretrain.init == 'imagenet' and folder == 'pretrain':
      merged = _strict_encoder(variables, _imagenet_encoder(config), 'config.finetune.imagenet_checkpoint')
      params, batch_stats = merged['params'], merged['batch_stats']
    state = loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=tx.init(params), extra=method.init_extra(params, batch_stats, mcfg),
        rng=loop.fresh_rng(config.seed * 1000 + index))
    if previous is not None:
      state = _carry_over(state, previous, stage)
    return sharding.replicate(state, mesh)

  step = _ResizingStep(lambda size: _pretrain_step(model, method, mcfg, tx, schedules, size),
                       sizes, mesh)
  loader = _pretrain_loader(config, stage, source, batch_size, config.seed * 1000 + index,
                            sizes, schedules['strength'])
  monitor = (make_monitor(config, model, int(sizes[-1]), mesh, data_dir)
             if config.pretrain.monitor_every else None)
  return loop.Job(name=f'{folder}/{stage.name}', directory=workdir / folder / stage.name,
                  num_steps=stage.steps, init_state=init_state, train_step=step, loader=loader,
                  mesh=mesh, checkpoint_every=config.checkpoint_every,
                  log_every=config.log_every, eval_every=config.pretrain.monitor_every,
                  evaluate=monitor)


def _imagenet_encoder(config):
  """The converted ImageNet ResNet as {'params': {'encoder'}, 'batch_stats': {'encoder'}}."""
  path = config.finetune.imagenet_checkpoint
  if not path:
    raise ValueError('config.finetune.imagenet_checkpoint is empty, but the run asks for '
                     'ImageNet weights; convert a torchvision/timm checkpoint with '
                     '`python -m cxr_jax.models.convert` and give its path')
  from cxr_jax.models import convert
  enc = convert.load_encoder(path, arch=config.model.name)
  return {'params': {'encoder': enc['params']}, 'batch_stats': {'encoder': enc['batch_stats']}}


def _strict_encoder(variables, encoder_vars, what):
  """Imported weights must fit exactly (never a silent fall back to random weights)."""
  from cxr_jax.models import convert
  enc = {'params': encoder_vars['params']['encoder'],
         'batch_stats': encoder_vars['batch_stats']['encoder']}
  return convert.merge_into(variables, enc, what=what)


def pretrain_curriculum(config, mesh, writer, workdir: Path, data_dir: Path,
                        stage_indices=None, folder: str = 'pretrain'):
  """Runs the stages in order (each resumes or skips itself); returns the final TrainState."""
  state = None
  indices = range(len(config.pretrain.stages)) if stage_indices is None else stage_indices
  for index in indices:
    state = loop.run_job(pretrain_job(config, index, state, mesh, workdir, data_dir, folder),
                         writer)
  return state


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
PROTOCOLS = ('finetune', 'linear', 'knn')
_PROTOCOL_DIRS = {'finetune': 'finetune', 'linear': 'linear_probe', 'knn': 'knn'}


class _EvalData:
  """The labeled splits of config.finetune.data, read once per run (label fractions are
  index subsets of `train`)."""

  def __init__(self, config, data_dir):
    ft = config.finetune
    self.builder = pipeline.get_builder(ft.data, data_dir, key='config.finetune.data')
    self.class_names = schema.class_names(self.builder)
    get = lambda split, key: pipeline.get_source(self.builder, split, f'config.finetune.data.{key}')
    self.train_source = get(ft.data.train_split, 'train_split')
    self.train_meta = pipeline.read_all(self.train_source, ('label', 'patient_id'))
    self.val = pipeline.read_all(get(ft.data.val_split, 'val_split'), ('image', 'label'))
    fields = ('image', 'label', 'patient_id') + (('mask',) if self._has('mask') else ())
    self.test = pipeline.read_all(get(ft.data.test_split, 'test_split'), fields)
    self.channels = self.builder.info.features['image'].shape[-1]
    self._train_images = None

  def train_images(self, config):
    """The train split's images and labels for the fine-tuning loader: from the image
    cache (with the labels read once) when config.image_cache, else the TFDS records.
    Opened on the first call and shared by every fine-tuning job."""
    if self._train_images is None:
      cache = pipeline.image_cache(self.train_source) if config.get('image_cache', True) else None
      self._train_images = (cache.with_columns(label=self.train_meta['label'])
                            if cache is not None else self.train_source)
    return self._train_images

  def _has(self, name):
    return name in self.builder.info.features

  def train_indices(self, fraction, seed):
    if fraction >= 1.0:
      return np.arange(len(self.train_source))
    from cxr_jax.data import splits
    return np.asarray(splits.label_fraction_subset(
        self.train_meta['label'], self.train_meta['patient_id'], fraction, seed))


def _encoder_vars(state_or_vars):
  if state_or_vars is None:
    return None
  if isinstance(state_or_vars, loop.TrainState):
    return {'params': {'encoder': state_or_vars.params['encoder']},
            'batch_stats': {'encoder': state_or_vars.batch_stats['encoder']}}
  return state_or_vars


def _copy_tree(tree):
  """Distinct buffers for the best-so-far weights: the live ones are donated to the step."""
  return jax.tree_util.tree_map(jnp.copy, tree)


def _classifier_variables(model, config, seed, channels, encoder_vars,
                          strict=False):
  rng = jax.random.fold_in(_init_key(config.seed), 10_000 + seed)
  variables = _init(model, rng, channels)
  params, batch_stats = variables['params'], variables['batch_stats']
  if encoder_vars is not None and strict:
    merged = _strict_encoder(variables, encoder_vars, 'config.finetune.imagenet_checkpoint')
    return (jax.tree_util.tree_map(jnp.array, merged['params']),
            jax.tree_util.tree_map(jnp.array, merged['batch_stats']))
  if encoder_vars is not None:
    params = dict(params, encoder=_merge(params['encoder'], encoder_vars['params']['encoder']))
    batch_stats = dict(batch_stats, encoder=_merge(batch_stats['encoder'],
                                                   encoder_vars['batch_stats']['encoder']))
  return params, batch_stats


def _frozen_probe(config, protocol, model, variables, data, indices, mesh):
  """Linear probe or weighted kNN on the frozen encoder's features: val and test probs."""
  from cxr_jax.eval import probes
  image_size = config.finetune.image_size

  @jax.jit
  def features(variables, images):
    x = augment.resize(images.astype(jnp.float32) / 255.0, image_size)
    return model.apply(variables, x, method=lambda m, x: m.encoder(x, train=False))
  extract = batched_apply(features, mesh, config.eval_batch_size)
  train_images = pipeline.read_all(pipeline.Subset(data.train_source, indices), ('image',))['image']
  train_labels = data.train_meta['label'][indices]
  bank = extract(variables, train_images)
  k = len(data.class_names)
  out = []
  for images in (data.val['image'], data.test['image']):
    f = extract(variables, images)
    if protocol == 'knn':
      out.append(np.asarray(probes.knn_predict(bank, train_labels, f, k, k=20, temperature=0.07)))
    else:
      probe = probes.linear_probe_fit(bank, train_labels, k)
      out.append(np.asarray(probes.linear_probe_predict(probe, f)))
  return out


def finetune_job(config, protocol: str, init: str, fraction: float, seed: int, encoder_vars,
                 data: _EvalData, mesh, writer, workdir: Path) -> dict:
  """Evaluates one (protocol, init, label fraction, seed) cell; returns its result dict.

  protocol 'finetune' trains the whole classifier (model selection on val only); 'linear'
  and 'knn' score the frozen encoder's features."""
  ft = config.finetune
  directory = workdir / _PROTOCOL_DIRS[protocol] / init / f'{fraction:g}' / f'seed{seed}'
  result_path = directory / 'result.json'
  if result_path.exists():
    return json.loads(result_path.read_text())
  directory.mkdir(parents=True, exist_ok=True)
  class_names = data.class_names
  indices = data.train_indices(fraction, seed)
  model = heads.ClassifierModel(encoder=_model_encoder(config), num_classes=len(class_names))
  cache_key = (config.model.to_json(), ft.to_json(), len(class_names))
  if cache_key not in _FINETUNE_FNS:  # one compilation serves every init, fraction and seed
    tx, _ = optim.make_optimizer(ft.optimizer, ft.steps, ft.batch_size)
    _FINETUNE_FNS[cache_key] = (
        tx, make_predict(model, ft.image_size, mesh, config.eval_batch_size),
        jax.jit(_finetune_step(model, tx, ft.image_size, ft.strength), donate_argnums=0,
                out_shardings=sharding.replicated(mesh)))
  tx, predict, step = _FINETUNE_FNS[cache_key]
  job_name = f'{_PROTOCOL_DIRS[protocol]}/{init}/{fraction:g}/seed{seed}'

  if protocol != 'finetune':
    params, batch_stats = _classifier_variables(model, config, seed, data.channels,
                                                encoder_vars, init == 'imagenet')
    best = {'params': params, 'batch_stats': batch_stats}
    val_probs, probs = _frozen_probe(config, protocol, model, best, data, indices, mesh)
    val_score, best_step = _selection_score(_eval_metrics(data.val['label'], val_probs,
                                                          class_names)), 0
  else:
    def init_state():
      params, batch_stats = _classifier_variables(model, config, seed, data.channels,
                                                  encoder_vars, init == 'imagenet')
      # best_score strongly typed: a weak-typed scalar here and a strong one after the
      # first evaluation would be two input types, and the step would compile twice
      extra = {'best_params': _copy_tree(params), 'best_batch_stats': _copy_tree(batch_stats),
               'best_score': jnp.asarray(-jnp.inf, jnp.float32),
               'best_step': jnp.zeros((), jnp.int32)}
      state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              batch_stats=batch_stats, opt_state=tx.init(params), extra=extra,
                              rng=loop.fresh_rng(seed))
      return sharding.replicate(state, mesh)

    def evaluate(state):
      probs = predict({'params': state.params, 'batch_stats': state.batch_stats},
                      data.val['image'])
      m = _eval_metrics(data.val['label'], probs, class_names)
      score = _selection_score(m)
      if score > float(state.extra['best_score']):  # model selection on val only
        # replicated like the step's own outputs (a different sharding would recompile it)
        state = state.replace(extra=sharding.replicate({
            'best_params': _copy_tree(state.params),
            'best_batch_stats': _copy_tree(state.batch_stats),
            'best_score': jnp.asarray(score, jnp.float32), 'best_step': jnp.copy(state.step)},
            mesh))
      return state, {f'val/{k}': v for k, v in m.items() if np.isfinite(v)}

    train = pipeline.Subset(data.train_images(config), indices)
    batch_size = pipeline.per_host_batch(ft.batch_size, 'config.finetune.batch_size')
    loader = pipeline.make_loader(train, batch_size=min(batch_size, len(train)), seed=seed,
                                  fields=('image', 'label'), worker_count=config.worker_count,
                                  read_threads=config.get('read_threads', 0))
    job = loop.Job(name=job_name, directory=directory, num_steps=ft.steps,
                   init_state=init_state, train_step=step, loader=loader, mesh=mesh,
                   checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                   eval_every=ft.eval_every, evaluate=evaluate)
    state = loop.run_job(job, writer)
    best = {'params': state.extra['best_params'], 'batch_stats': state.extra['best_batch_stats']}
    probs = predict(best, data.test['image'])
    val_score, best_step = float(state.extra['best_score']), int(state.extra['best_step'])

  test_metrics = _eval_metrics(data.test['label'], probs, class_names)
  result = {'protocol': protocol, 'init': init, 'label_fraction': fraction, 'seed': seed,
            'num_train': int(len(indices)), 'best_step': best_step, 'val_score': val_score,
            'class_names': list(class_names), 'test': test_metrics}
  if jax.process_index() == 0:
    np.savez_compressed(directory / 'test_predictions.npz', probs=probs,
                        labels=data.test['label'], patient_id=data.test['patient_id'])
    if protocol == 'finetune' and config.explain.enabled and 'mask' in data.test:
      _explain(config, model, best, data, directory)
    writer.write(job_name, ft.steps, {f'test/{k}': v for k, v in test_metrics.items()
                                      if np.isfinite(v)})
    result_path.write_text(json.dumps(result, indent=2))
  return result


def _explain(config, model, variables, data, directory):
  """Grad-CAM attention inside the lung masks of the test images -> attention.npz."""
  from cxr_jax.explain import analysis
  extra = {}
  test_source = pipeline.get_source(data.builder, config.finetune.data.test_split)
  for name in filter(None, (n.strip() for n in config.explain.extra_masks.split(','))):
    if name == 'marker' and 'confounder' in data.builder.info.features:
      # the phantom's burned-in marker: the region where it can sit, per image
      corner = pipeline.read_all(test_source, ('confounder',))['confounder']
      extra[name] = analysis.marker_region_masks(corner, data.test['image'].shape[1])
    elif name in data.builder.info.features:
      extra[name] = pipeline.read_all(test_source, (name,))[name]
    else:
      raise ValueError(f'config.explain.extra_masks: the dataset has no field {name!r}')
  result = analysis.attention_analysis(
      model, jax.device_get(variables), data.test['image'], data.test['mask'],
      data.test['label'], config.finetune.image_size, extra_masks=extra or None,
      batch_size=config.eval_batch_size, overlay_per_class=config.explain.num_overlays,
      patient_id=data.test['patient_id'], stage=config.explain.get('stage', 0) or None)
  np.savez_compressed(directory / 'attention.npz', **result)


# ----------------------------------------------------------------------------- the plan

def run(config: ml_collections.ConfigDict, workdir) -> list[dict]:
  """Runs (or resumes) the whole plan in `workdir`; returns the evaluation results."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  validate(config)
  check_or_write_config(config, workdir)
  data_dir = Path(config.data_dir) if config.data_dir else workdir / 'tfds'
  mesh = sharding.make_mesh()
  writer = loop.MetricWriter(workdir)
  inits = _inits(config)
  try:
    encoders = {'scratch': None}
    if 'curricular' in inits:
      encoders['curricular'] = _encoder_vars(pretrain_curriculum(config, mesh, writer, workdir,
                                                                 data_dir))
    if 'ssl' in inits:  # one SSL stage on the target data, from scratch
      encoders['ssl'] = _encoder_vars(pretrain_curriculum(
          config, mesh, writer, workdir, data_dir, [_ssl_stage_index(config)], 'pretrain_ssl'))
    if 'imagenet' in inits:
      encoders['imagenet'] = _imagenet_encoder(config)
    data = _EvalData(config, data_dir)
    results = []
    for protocol in _protocols(config):
      for init in inits:
        for fraction in config.finetune.label_fractions:
          for seed in range(config.finetune.num_seeds):
            results.append(finetune_job(config, protocol, init, float(fraction), seed,
                                        encoders[init], data, mesh, writer, workdir))
  finally:
    writer.close()
  if jax.process_index() == 0:
    from cxr_jax import report
    report.write_report(workdir)
  return results


def _protocols(config):
  return [p.strip() for p in config.finetune.protocols.split(',') if p.strip()]


def _ssl_stage_index(config):
  names = [s.name for s in config.pretrain.stages]
  name = config.pretrain.ssl_stage or names[-1]
  if name not in names:
    raise ValueError(f'config.pretrain.ssl_stage={name!r} is not a stage; stages: {names}')
  return names.index(name)
