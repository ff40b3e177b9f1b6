"""Self-supervised pretraining: the curriculum's stages, one Job each.

    run_curriculum(config, ...) -> final TrainState
      for each stage (or the chosen ones), in order:
        pretrain_job: the stage's data and loader (uniform or paced), its schedules, the
          SSL step at the view size of each step (progressive resizing), the state carried
          over from the previous stage, the kNN / linear-probe monitors
        -> <workdir>/<folder>/<stage>/ (Orbax checkpoints; done when the last is at
           the stage's final step)

The step is `make_step`: one jit-compiled function per view size, the loss of the stage's
method (`cxr_jax.ssl.<method>`: stages[i].method, else config.pretrain.method), its inputs
built on the device (or two views cut on the host, config.augment_on). Between stages of
different methods only the encoder carries over (`carry_over`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cxr_jax import curriculum
from cxr_jax import platform
from cxr_jax import ssl
from cxr_jax.ssl import common as ssl_common
from cxr_jax.data import augment
from cxr_jax.data import host_augment
from cxr_jax.data import image_cache
from cxr_jax.data import pacing as pacing_lib
from cxr_jax.data import pipeline
from cxr_jax.data import schema
from cxr_jax.eval import metrics as M
from cxr_jax.eval import probes
from cxr_jax.models import convert
from cxr_jax.models.merge import merge_strict
from cxr_jax.train import compute
from cxr_jax.train import inference
from cxr_jax.train import loop
from cxr_jax.train import optim
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib
from cxr_jax.train import timing

log = logging.getLogger('cxr_jax')


def make_step(model, method, mcfg, tx, schedules, image_size: int):
  """The pretraining step at one view size: (state, batch) -> (state, scalar metrics).

  batch: {'image': uint8 [B,H,W,C]} (the method's inputs built here, on the device, by
  `ssl.make_inputs(method)`: two augmented views, or a pretext task's inputs and targets;
  with 'image2', view 2 from it: patient-aware positives) or {'view1', 'view2'} (cut on
  the host). `schedules` maps names to step -> value functions; their values reach the
  method as traced scalars in `hp`, so schedules never recompile the step.
  The metrics include 'finite' (`loop.checked`)."""
  make_inputs = ssl.make_inputs(method)

  def step(state, batch):
    t = state.step
    hp = {name: jnp.asarray(fn(t), jnp.float32) for name, fn in schedules.items()}
    if 'view1' in batch:  # cut on the host (config.augment_on='host')
      inputs = {'view1': augment.to_float(batch['view1']),
                'view2': augment.to_float(batch['view2'])}
    else:
      rng = jax.random.fold_in(state.rng, t)
      images = batch['image'].astype(jnp.float32) / 255.0
      if 'image2' in batch:  # another image of the same patient for view 2 (positives='patient')
        second = batch['image2'].astype(jnp.float32) / 255.0
        inputs = ssl_common.two_view_inputs(rng, images, hp, image_size, mcfg, second=second)
      else:
        inputs = make_inputs(rng, images, hp, image_size, mcfg)

    def loss_of(params):
      return method.loss_fn(model, params, state.batch_stats, state.extra, inputs, hp, mcfg)

    (loss, (batch_stats, metrics, aux)), grads = jax.value_and_grad(
        loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = method.update_extra(state.extra, params, batch_stats, hp, mcfg, aux)
    metrics = dict(metrics, loss=loss, strength=hp['strength'], temperature=hp['temperature'],
                   lr=hp['lr'], image_size=jnp.asarray(image_size, jnp.float32))
    return state.replace(step=t + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, extra=extra), metrics
  return loop.checked(step)


def flops_key(config, index: int) -> str:
  """What a stage's FLOPs per step depend on: the model, the pretraining settings and the
  stage's own (not its length, name or size schedule: the count is per step and size),
  JAX's version and the backend the program is traced for."""
  stage = {k: v for k, v in config.pretrain.stages[index].to_dict().items()
           if k not in ('name', 'steps', 'image_size')}
  pretrain = {k: v for k, v in config.pretrain.to_dict().items()
              if k not in ('stages', 'ssl_stage', 'monitor_every', 'match', 'init',
                           'curricula')}
  text = json.dumps([config.model.to_dict(), pretrain, stage, jax.__version__,
                     jax.default_backend()], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_sizes(spec, num_steps: int, key: str) -> np.ndarray:
  """[num_steps] view sizes of a stage: its `image_size` schedule rounded to multiples of 8
  (progressive resizing; each distinct size compiles the step once)."""
  fn = curriculum.make_schedule(spec, num_steps, key)
  sizes = np.asarray([float(fn(t)) for t in range(num_steps)])
  sizes = (np.round(sizes / 8) * 8).astype(int)
  if sizes.min() < 8:
    raise ValueError(f'{key}: image sizes must be >= 8 px, got {sizes.min()}')
  return sizes


class ResizingStep:
  """The stage's step at the view size its schedule gives for the current step: one
  jit-compiled function per distinct size, chosen on the host (no device sync)."""

  def __init__(self, make_sized_step, sizes, mesh, flops_key: str | None = None):
    self._sizes = sizes
    self.make_sized_step = make_sized_step  # also read by train/compute.py's FLOP count
    self.input_spec = None  # a global batch's shapes (pretrain_job sets it), for the same
    self._steps = {int(s): jax.jit(make_sized_step(int(s)), donate_argnums=0,
                                   out_shardings=sharding.replicated(mesh))
                   for s in np.unique(sizes)}
    self._flops_key = flops_key  # the stage's FLOP key (`flops_key`): count from our lowering
    self._ready: set[int] = set()
    self._t = None

  def __call__(self, state, batch):
    if self._t is None:
      self._t = int(state.step)
    size = int(self._sizes[min(self._t, len(self._sizes) - 1)])
    self._t += 1
    if size not in self._ready:
      self._ready.add(size)
      self._count_while_compiling(size, state, batch)
    return self._steps[size](state, batch)

  def _count_while_compiling(self, size: int, state, batch):
    """On the CPU backend, the FLOP count of a size not counted yet comes from the
    lowering the step compiles from (the jitted call reuses the compiled program), so the
    count costs no trace of its own. Only for the batch the count is defined on (views
    cut on the device: `input_spec`)."""
    if (self._flops_key is None or not compute.counts_on_the_step()
        or set(batch) != set(self.input_spec or ())
        or compute.cached_counts(self._flops_key, [size])):
      return
    lowered = self._steps[size].lower(state, batch)
    try:
      compute.note_lowered(self._flops_key, size, lowered)
    except ValueError as e:  # no count here is no reason to stop training: counted apart
      log.warning('the FLOP count of the %d px step is left to a separate trace: %s', size, e)
    lowered.compile()


def make_loader(config, stage, source, batch_size: int, seed: int, sizes, strength):
  """The stage's batches: uniform shuffling, or the data-difficulty curriculum of
  config.curriculum; with stage.positives='patient', each record also brings 'image2',
  another image of its patient (`pipeline.PatientPositives`); with
  config.augment_on='host', records leave the loader as the step's two views (`sizes`:
  view size per step, `strength`: its schedule)."""
  if config.curriculum.pacing.kind == 'none':
    images = (image_cache.for_split(source) or source) if config.image_cache else source
    maps, fields = [], ('image',)
    if stage.positives == 'patient':  # view 2 from another image of the same patient
      patient_ids = pipeline.read_all(source, ('patient_id',))['patient_id']
      maps.append(pipeline.PatientPositives(images, patient_ids,
                                            seed=seed * 1024 + jax.process_index()))
      images, fields = pipeline.WithIndex(images), ('image', 'index')
    if config.augment_on == 'host':
      strengths = np.asarray([float(strength(t)) for t in range(stage.steps)], np.float32)
      # indices are per process: the process in the seed keeps hosts' draws apart
      maps.append(host_augment.TwoViews(np.asarray(sizes), strengths, batch_size=batch_size,
                                        seed=seed * 1024 + jax.process_index()).map_with_index)
    return pipeline.make_loader(images, batch_size=batch_size, seed=seed, fields=fields,
                                worker_count=config.worker_count,
                                read_threads=config.read_threads,
                                map_with_index=pipeline.chain(maps))
  difficulty = pacing_lib.difficulty_from_config(
      config.curriculum.difficulty, lambda field: pipeline.read_all(source, (field,))[field])
  sampler = pacing_lib.PacedSampler(
      difficulty, curriculum.make_pacing(config.curriculum.pacing, stage.steps,
                                         'config.curriculum.pacing'),
      batch_size=stage.batch_size, seed=seed)
  return grain.DataLoader(
      data_source=pipeline.decoding(source, ('image',)), sampler=sampler,
      shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
      operations=[pipeline.SelectFields(('image',)),
                  grain.transforms.Batch(batch_size, drop_remainder=True)],
      # its state names the worker count: resume a paced run with the same count
      worker_count=platform.num_workers(config.worker_count))


def carry_over(fresh: loop.TrainState, previous: loop.TrainState, stage, key: str,
               same_method: bool = True):
  """The new stage's starting state: the previous stage's network (the whole model when
  keep_head, else the encoder only), optionally its optimizer state and EMA target.
  Strict: a stage whose network differs from the previous one's is an error.

  same_method=False (the stage runs another method than the stage before): the encoder
  alone carries over; heads, predictor, target and optimizer state start fresh whatever
  keep_head and keep_target say (their defaults are True; configuration.validate refuses
  keep_optimizer=True there), and an EMA target restarts as a copy of the carried-over
  online network."""
  what = f'{key}: the previous stage\'s network'
  if stage.keep_head and same_method:
    params = merge_strict(fresh.params, previous.params, what)
    batch_stats = merge_strict(fresh.batch_stats, previous.batch_stats, what)
  else:
    params = dict(fresh.params, encoder=merge_strict(
        fresh.params['encoder'], previous.params['encoder'], what))
    batch_stats = dict(fresh.batch_stats, encoder=merge_strict(
        fresh.batch_stats['encoder'], previous.batch_stats['encoder'], what))
  opt_state = fresh.opt_state
  if stage.keep_optimizer:
    if not same_method:
      raise ValueError(f'{key}.keep_optimizer=True: the stage runs another method than the '
                       'stage before, whose optimizer state belongs to other heads')
    same = jax.tree_util.tree_structure(previous.opt_state) == jax.tree_util.tree_structure(opt_state)
    if not same:
      raise ValueError(f'{key}: keep_optimizer=True needs the same optimizer state '
                       'structure as the stage before')
    leaves = [merge_strict(f, p, f'{key}: the previous stage\'s optimizer state')
              for f, p in zip(jax.tree_util.tree_leaves(opt_state),
                              jax.tree_util.tree_leaves(previous.opt_state))]
    opt_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(opt_state), leaves)
  extra = fresh.extra
  if isinstance(extra, dict) and 'target' in extra:
    target = extra['target']
    if (stage.keep_target and same_method and isinstance(previous.extra, dict)
        and 'target' in previous.extra):
      target = merge_strict(target, previous.extra['target'], f'{key}: the previous stage\'s target')
    else:  # the target starts as a copy of the carried-over online network (no predictor)
      online = {'params': params, 'batch_stats': batch_stats}
      target = merge_strict(target, {c: {k: online[c][k] for k in target[c]} for c in target},
                            f'{key}: the online network')
    extra = dict(extra, target=target)
  return fresh.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, extra=extra)


def hand_over_note(stage_name: str, method_name: str, previous_method: str) -> str:
  """The log line of a hand-over between stages of different methods."""
  return (f'stage {stage_name}: method {method_name} after {previous_method}: encoder carried '
          'over; projector/predictor/target/optimizer fresh')


def make_monitor(finetune_data, model, image_size: int, mesh, data_dir: Path,
                 batch_size: int):
  """Online monitors of a pretraining stage on the labeled data `finetune_data`
  (config.finetune.data): weighted kNN and a logistic-regression probe
  (`probes.frozen_probe_probs`) on the encoder's frozen (stop-gradient) features, fit on
  the train split, scored on val; features `batch_size` images at a time.

  The probe is refit at each monitoring step rather than trained inside the SSL step, since
  the pretraining data is unlabeled by construction."""
  spec = finetune_data
  builder = pipeline.get_builder(spec, data_dir, key='config.finetune.data')
  findings = spec.get('findings', '')
  field = 'targets' if findings else 'label'
  bank = pipeline.read_all(pipeline.get_source(builder, spec.train_split), ('image', field))
  query = pipeline.read_all(pipeline.get_source(builder, spec.val_split), ('image', field))
  extract = inference.make_features(model, image_size, mesh, batch_size)
  if findings:  # multi-label: kNN of neighbour-averaged targets, one logistic head each
    names, columns = schema.select_findings(builder, findings)
    bank_t, query_t = bank['targets'][:, columns], query['targets'][:, columns]

    def evaluate_findings(state):
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      fb, fq = extract(variables, bank['image']), extract(variables, query['image'])
      knn, linear = (probes.frozen_probe_probs(kind, fb, bank_t, [fq], len(names),
                                               multilabel=True)[0]
                     for kind in ('knn', 'linear'))
      return state, {'monitor/knn_auroc': M.multilabel_metrics(query_t, knn, names)['auroc'],
                     'monitor/linear_auroc':
                         M.multilabel_metrics(query_t, linear, names)['auroc']}
    return evaluate_findings
  names = schema.class_names(builder)

  def evaluate(state):
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    fb, fq = extract(variables, bank['image']), extract(variables, query['image'])
    knn, linear = (probes.frozen_probe_probs(kind, fb, bank['label'], [fq], len(names))[0]
                   for kind in ('knn', 'linear'))
    knn_metrics = M.classification_metrics(query['label'], knn, names)
    return state, {'monitor/knn_acc': knn_metrics['accuracy'],
                   'monitor/knn_auroc': knn_metrics['auroc'],
                   'monitor/linear_acc': float(np.mean(linear.argmax(-1) == query['label'])),
                   'monitor/linear_auroc':
                       M.classification_metrics(query['label'], linear, names)['auroc']}
  return evaluate


def pretrain_job(config, index: int, previous, mesh, workdir: Path, data_dir: Path,
                 folder: str = 'pretrain', imagenet=None,
                 previous_method: str | None = None) -> loop.Job:
  """The Job of curriculum stage `index`, starting from `previous` (a TrainState or None)
  that method `previous_method` trained (None: the method of stage index - 1); the first
  stage of the curriculum starts from `imagenet` (an `encoder_variables` dict) when given.
  The stage runs its own method (`ssl.stage_method`) with that method's optimizer
  (`ssl.optimizer_config`)."""
  stage = config.pretrain.stages[index]
  key = f'config.pretrain.stages[{index}]'
  method_name = ssl.stage_method(config.pretrain, index)
  method = ssl.get_method(method_name, f'{key}.method')
  mcfg = config.pretrain[method_name]
  if previous is not None and previous_method is None:
    previous_method = ssl.stage_method(config.pretrain, max(index - 1, 0))
  same_method = previous is None or previous_method == method_name
  if not same_method:
    log.info(hand_over_note(stage.name, method_name, previous_method))
  optimizer = ssl.optimizer_config(config.pretrain, method_name)
  overrides = dict(mcfg.get('optimizer', {}))
  if overrides:  # say so: the method's recipe wins over config.pretrain.optimizer
    log.info('stage %s: method %s sets its optimizer %s (config.pretrain.%s.optimizer, over '
             'config.pretrain.optimizer)', stage.name, method_name, overrides, method_name)
  model = method.build_model(state_lib.encoder_from_config(config.model), mcfg)
  builder = pipeline.get_builder(stage.data, data_dir, key=f'{key}.data')
  source = pipeline.get_source(builder, stage.data.split, key=f'{key}.data.split')
  batch_size = pipeline.per_host_batch(stage.batch_size, f'{key}.batch_size')
  tx, lr_schedule = optim.make_optimizer(optimizer, stage.steps, stage.batch_size)
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
    rng = jax.random.fold_in(state_lib.init_key(config.seed), index)
    variables = state_lib.init_variables(model, rng, channels)
    params, batch_stats = variables['params'], variables['batch_stats']
    if imagenet is not None:
      params, batch_stats = state_lib.with_encoder(
          variables, imagenet, 'config.finetune.imagenet_checkpoint', convert.IMAGENET_HINT)
    state = loop.TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
        opt_state=jax.jit(tx.init)(params),  # one program, not one per leaf shape
        extra=method.init_extra(params, batch_stats, mcfg),
        rng=loop.fresh_rng(config.seed * 1000 + index))
    if previous is not None:
      state = carry_over(state, previous, stage, key, same_method)
    return sharding.replicate(state, mesh)

  step = ResizingStep(lambda size: make_step(model, method, mcfg, tx, schedules, size),
                      sizes, mesh, flops_key=flops_key(config, index))
  step.input_spec = {  # the FLOP count's batch (train/compute.py): views cut on the device
      name: jax.ShapeDtypeStruct((stage.batch_size, *builder.info.features['image'].shape),
                                 np.uint8)
      for name in (('image', 'image2') if stage.positives == 'patient' else ('image',))}
  loader = make_loader(config, stage, source, batch_size, config.seed * 1000 + index,
                       sizes, schedules['strength'])
  monitor = (make_monitor(config.finetune.data, model, int(sizes[-1]), mesh, data_dir,
                          config.eval_batch_size)
             if config.pretrain.monitor_every else None)
  return loop.Job(name=f'{folder}/{stage.name}', directory=workdir / folder / stage.name,
                  num_steps=stage.steps, init_state=init_state, train_step=step, loader=loader,
                  mesh=mesh, checkpoint_every=config.checkpoint_every,
                  log_every=config.log_every, eval_every=config.pretrain.monitor_every,
                  evaluate=monitor, advice=loop.lower_lr_advice(
                      ssl.optimizer_key(config.pretrain, method_name, 'lr'), optimizer.lr))


def run_curriculum(config, mesh, writer, workdir: Path, data_dir: Path, stage_indices=None,
                   folder: str = 'pretrain', imagenet=None) -> loop.TrainState:
  """Runs the stages in order (each resumes or skips itself); returns the final TrainState.
  `imagenet`: the encoder the first stage starts from (config.pretrain.init='imagenet')."""
  state, method = None, None
  indices = range(len(config.pretrain.stages)) if stage_indices is None else stage_indices
  for n, index in enumerate(indices):
    with timing.phase('data', job=f'{folder}/{config.pretrain.stages[index].name}'):
      job = pretrain_job(config, index, state, mesh, workdir, data_dir, folder,
                         imagenet=imagenet if n == 0 else None, previous_method=method)
    state = loop.run_job(job, writer)
    method = ssl.stage_method(config.pretrain, index)
  return state
