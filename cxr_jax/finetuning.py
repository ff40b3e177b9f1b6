"""Fine-tuning and evaluation: one (protocol, init, label fraction, seed) cell per job.

    EvalData: the labeled splits of config.finetune.data, read once per run
    Programs: the run's compiled functions (fine-tuning step, predictor, feature extractor)
    finetune_job: protocol 'finetune' trains the whole classifier (model selection on val
      only, its selected weights kept as best.msgpack); 'linear' and 'knn' score the
      frozen encoder's features; the test predictions, result.json and (optionally) the Grad-CAM attention of the test images are written
      -> <workdir>/<protocol folder>/<init>/<fraction>/seed<k>/
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cxr_jax import attention_job
from cxr_jax import vocab
from cxr_jax.data import augment
from cxr_jax.data import image_cache
from cxr_jax.data import pipeline
from cxr_jax.data import schema
from cxr_jax.data import splits
from cxr_jax.eval import metrics as M
from cxr_jax.eval import probes
from cxr_jax.files import BEST_WEIGHTS
from cxr_jax.files import save_npz
from cxr_jax.files import save_weights
from cxr_jax.models import convert
from cxr_jax.models import heads
from cxr_jax.train import inference
from cxr_jax.train import loop
from cxr_jax.train import optim
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib
from cxr_jax.train import workdir as workdir_lib

log = logging.getLogger('cxr_jax')


class EvalData:
  """The labeled splits of a fine-tuning data spec (config.finetune.data), read once per
  run (label fractions are index subsets of `train`).

  The task: the single `label` (class_names = the builder's classes, softmax), or, when
  the spec's `findings` is set, the selected columns of `targets` (class_names = those
  findings, one sigmoid each; `label` arrays are then float [N, F] with NaN = not
  observed)."""

  def __init__(self, data_spec, data_dir: Path, image_cache: bool):
    key = 'config.finetune.data'
    self.builder = pipeline.get_builder(data_spec, data_dir, key=key)
    findings = data_spec.get('findings', '')
    self.multilabel = bool(findings)
    if self.multilabel:
      self.class_names, columns = schema.select_findings(self.builder, findings,
                                                         f'{key}.findings')
    else:
      self.class_names = schema.class_names(self.builder)
    target = 'targets' if self.multilabel else 'label'
    get = lambda split, name: pipeline.get_source(self.builder, split, f'{key}.{name}')
    self.train_source = get(data_spec.train_split, 'train_split')
    self.test_source = get(data_spec.test_split, 'test_split')
    self.train_meta = pipeline.read_all(self.train_source, (target, 'patient_id'))
    self.val = pipeline.read_all(get(data_spec.val_split, 'val_split'), ('image', target))
    fields = ('image', target, 'patient_id') + (('mask',) if self.has('mask') else ())
    self.test = pipeline.read_all(self.test_source, fields)
    if self.multilabel:  # the selected findings, under the name every consumer reads
      for split in (self.train_meta, self.val, self.test):
        split['label'] = np.asarray(split.pop('targets')[:, columns], np.float32)
    self.channels = self.builder.info.features['image'].shape[-1]
    self._image_cache = image_cache
    self._train_images = None
    self.data_dir = data_dir
    self.explain_images = None  # attention_job.ExplainSet, read on first use

  def has(self, field: str) -> bool:
    return field in self.builder.info.features

  def train_images(self):
    """The train split's images and labels for the fine-tuning loader: from the image
    cache (with the labels read once) when config.image_cache, else the TFDS records.
    Opened on the first call and shared by every fine-tuning job."""
    if self._train_images is None:
      cache = image_cache.for_split(self.train_source) if self._image_cache else None
      name = self.target_field
      if cache is not None:
        self._train_images = cache.with_columns(**{name: self.train_meta['label']})
      elif self.multilabel:  # the selected findings as a column beside the records
        self._train_images = pipeline.WithColumns(self.train_source,
                                                  {name: self.train_meta['label']})
      else:
        self._train_images = self.train_source
    return self._train_images

  @property
  def target_field(self) -> str:
    """The field the fine-tuning loader yields: 'label' (int) or 'targets' (the selected
    findings, float [F])."""
    return 'targets' if self.multilabel else 'label'

  def train_indices(self, fraction: float, seed: int) -> np.ndarray:
    if self.multilabel:  # every finding keeps a positive patient where it has one
      return np.asarray(splits.finding_fraction_subset(
          self.train_meta['label'], self.train_meta['patient_id'], min(fraction, 1.0), seed))
    if fraction >= 1.0:
      return np.arange(len(self.train_source))
    return np.asarray(splits.label_fraction_subset(
        self.train_meta['label'], self.train_meta['patient_id'], fraction, seed))


def make_step(model, tx, image_size: int, strength: float, multilabel: bool = False):
  """The fine-tuning step: augmented views, softmax cross-entropy (multilabel: the masked
  binary cross-entropy of each finding, `probes.masked_sigmoid_bce`), one optimizer
  update."""
  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    images = batch['image'].astype(jnp.float32) / 255.0
    views = augment.augment(rng, images, strength, image_size)

    def loss_of(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    views, train=True, mutable=['batch_stats'])
      if multilabel:
        loss = probes.masked_sigmoid_bce(logits, batch['targets'])
      else:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), {'loss': loss}
  return loop.checked(step)


class Programs:
  """The compiled functions every fine-tuning cell of a run shares: one compilation
  serves every init, label fraction and seed. Built once per run from everything they
  close over (model and fine-tuning config, number of classes, eval batch size, mesh)."""

  def __init__(self, model_config, finetune_config, num_classes: int, eval_batch_size: int,
               mesh, multilabel: bool = False):
    ft = finetune_config
    self.multilabel = multilabel
    self.model = heads.ClassifierModel(encoder=state_lib.encoder_from_config(model_config),
                                       num_classes=num_classes)
    self.tx, _ = optim.make_optimizer(ft.optimizer, ft.steps, ft.batch_size)
    # one program for the optimizer's zero state (eager, one per leaf shape)
    self.init_optimizer = jax.jit(self.tx.init)
    self.step = jax.jit(make_step(self.model, self.tx, ft.image_size, ft.strength, multilabel),
                        donate_argnums=0, out_shardings=sharding.replicated(mesh))
    self.predict = inference.make_predict(self.model, ft.image_size, mesh, eval_batch_size,
                                          multilabel=multilabel)
    self.features = inference.make_features(self.model, ft.image_size, mesh, eval_batch_size,
                                            encoder_only=True)


def seeds(protocol: str, init: str, fraction: float, num_seeds: int) -> range:
  """The seeds a cell needs. A frozen-encoder probe (linear, kNN) of a pretrained or
  imported encoder on all the labels has no randomness left (the probe fit is
  deterministic, the encoder fixed): one seed. Otherwise the seed draws the label subset
  and, for scratch, the encoder's random weights."""
  if protocol != 'finetune' and init != 'scratch' and fraction >= 1.0:
    return range(1)
  return range(num_seeds)


def selection_score(metrics: dict) -> float:
  score = metrics.get('auroc', float('nan'))
  return -metrics['loss'] if not np.isfinite(score) else score


def eval_metrics(labels, probs, class_names) -> dict:
  out = M.classification_metrics(labels, probs, class_names)
  if M.is_multilabel(labels):  # mean binary cross-entropy over the observed targets
    observed = ~np.isnan(labels)
    y = np.where(observed, labels, 0.0)
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0 - 1e-7)
    bce = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    out['loss'] = float(bce[observed].mean()) if observed.any() else float('nan')
    return out
  p = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
  out['loss'] = float(-np.mean(np.log(p)))
  return out


def classifier_variables(model, root_seed: int, seed: int, channels: int, encoder_vars,
                         init: str):
  """(params, batch_stats) of a fresh classifier for `seed`, its encoder from
  `encoder_vars` (strictly) unless the init is scratch."""
  rng = jax.random.fold_in(state_lib.init_key(root_seed), 10_000 + seed)
  variables = state_lib.init_variables(model, rng, channels)
  if encoder_vars is None:
    return variables['params'], variables['batch_stats']
  if init == 'imagenet':
    return state_lib.with_encoder(variables, encoder_vars, 'config.finetune.imagenet_checkpoint',
                                  convert.IMAGENET_HINT)
  return state_lib.with_encoder(variables, encoder_vars, f'the {init} encoder')


def frozen_probe(protocol: str, programs: Programs, variables, data: EvalData, indices):
  """Linear probe or weighted kNN (`probes.frozen_probe_probs`) on the frozen encoder's
  features: (val, test) probs."""
  train_images = pipeline.read_all(pipeline.Subset(data.train_source, indices), ('image',))['image']
  bank = programs.features(variables, train_images)
  queries = [programs.features(variables, images)
             for images in (data.val['image'], data.test['image'])]
  return probes.frozen_probe_probs(protocol, bank, data.train_meta['label'][indices], queries,
                                   len(data.class_names), multilabel=data.multilabel)


def _train(config, programs: Programs, job_name: str, directory: Path, seed: int,
           params, batch_stats, data: EvalData, indices, mesh, writer):
  """Fine-tunes with model selection on val; returns (best variables, val score, step)."""
  ft = config.finetune

  def init_state():
    # best_score strongly typed: a weak-typed scalar here and a strong one after the
    # first evaluation would be two input types, and the step would compile twice
    extra = {'best_params': state_lib.copy_tree(params),
             'best_batch_stats': state_lib.copy_tree(batch_stats),
             'best_score': jnp.asarray(-jnp.inf, jnp.float32),
             'best_step': jnp.zeros((), jnp.int32)}
    state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            batch_stats=batch_stats, opt_state=programs.init_optimizer(params),
                            extra=extra, rng=loop.fresh_rng(seed))
    return sharding.replicate(state, mesh)

  def evaluate(state):
    probs = programs.predict({'params': state.params, 'batch_stats': state.batch_stats},
                             data.val['image'])
    m = eval_metrics(data.val['label'], probs, data.class_names)
    score = selection_score(m)
    if score > float(state.extra['best_score']):  # model selection on val only
      # replicated like the step's own outputs (a different sharding would recompile it)
      state = state.replace(extra=sharding.replicate({
          'best_params': state_lib.copy_tree(state.params),
          'best_batch_stats': state_lib.copy_tree(state.batch_stats),
          'best_score': jnp.asarray(score, jnp.float32), 'best_step': jnp.copy(state.step)},
          mesh))
    return state, {f'val/{k}': v for k, v in m.items() if np.isfinite(v)}

  train = pipeline.Subset(data.train_images(), indices)
  batch_size = pipeline.per_host_batch(ft.batch_size, 'config.finetune.batch_size')
  loader = pipeline.make_loader(train, batch_size=min(batch_size, len(train)), seed=seed,
                                fields=('image', data.target_field),
                                worker_count=config.worker_count,
                                read_threads=config.read_threads)
  job = loop.Job(name=job_name, directory=directory, num_steps=ft.steps,
                 init_state=init_state, train_step=programs.step, loader=loader, mesh=mesh,
                 checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                 eval_every=ft.eval_every, evaluate=evaluate,
                 advice=loop.lower_lr_advice('finetune.optimizer.lr', ft.optimizer.lr))
  state = loop.run_job(job, writer)
  best = {'params': state.extra['best_params'], 'batch_stats': state.extra['best_batch_stats']}
  return best, float(state.extra['best_score']), int(state.extra['best_step'])


def finetune_job(config, programs: Programs, protocol: str, init: str, fraction: float,
                 seed: int, encoder_vars, data: EvalData, mesh, writer, workdir: Path) -> dict:
  """Evaluates one (protocol, init, label fraction, seed) cell; returns its result dict
  (read back from result.json when the cell is already done)."""
  folder = vocab.PROTOCOL_FOLDERS[protocol]
  job_name = f'{folder}/{init}/{fraction:g}/seed{seed}'
  directory = workdir / job_name
  result_path = directory / 'result.json'
  if result_path.exists():
    try:
      return json.loads(result_path.read_text())
    except ValueError:  # torn (written in place before writes were atomic): redo the cell
      log.warning('%s: %s cannot be read; evaluating the cell again', job_name, result_path)
  directory.mkdir(parents=True, exist_ok=True)
  indices = data.train_indices(fraction, seed)
  if data.multilabel:  # what the label fraction left of each finding (the report notes 0s)
    train_positives = dict(zip(data.class_names,
                               map(int, positives(data.train_meta['label'][indices]))))
    warn_missing_positives(job_name, data.class_names, train_positives,
                           positives(data.test['label']))
  params, batch_stats = classifier_variables(programs.model, config.seed, seed, data.channels,
                                             encoder_vars, init)
  if protocol == 'finetune':
    best, val_score, best_step = _train(config, programs, job_name, directory, seed, params,
                                        batch_stats, data, indices, mesh, writer)
    probs = programs.predict(best, data.test['image'])
  else:
    best = {'params': params, 'batch_stats': batch_stats}
    val_probs, probs = frozen_probe(protocol, programs, best, data, indices)
    val_score = selection_score(eval_metrics(data.val['label'], val_probs, data.class_names))
    best_step = 0

  test_metrics = eval_metrics(data.test['label'], probs, data.class_names)
  result = {'protocol': protocol, 'init': init, 'label_fraction': fraction, 'seed': seed,
            'task': 'findings' if data.multilabel else 'label',
            'num_train': int(len(indices)), 'best_step': best_step, 'val_score': val_score,
            'class_names': list(data.class_names),
            'image_shape': [int(d) for d in data.test['image'].shape[1:]],  # stored [S, S, C]
            'test': test_metrics}
  if data.multilabel:
    result['train_positives'] = train_positives
  if data.multilabel and config.explain.enabled and 'mask' in data.test:
    name = data.class_names[explained_finding(config, data)]
    # the classes of attention.npz: absent / present of the explained finding
    result['explained_finding'] = name
    result['attention_class_names'] = [f'no {name}', name]
  if jax.process_index() == 0:
    save_npz(directory / 'test_predictions.npz', probs=probs, labels=data.test['label'],
             patient_id=data.test['patient_id'])
    if protocol == 'finetune':  # the selected weights, for cxr_jax.cli.export / predict
      save_weights(directory / BEST_WEIGHTS, best)
    if protocol == 'finetune' and config.explain.enabled:
      explain(config, programs.model, best, data, directory)
    writer.write(job_name, config.finetune.steps,
                 {f'test/{k}': v for k, v in test_metrics.items() if np.isfinite(v)})
    workdir_lib.write_text(result_path, json.dumps(result, indent=2))  # the cell is done
  return result


def positives(targets) -> np.ndarray:
  """[F] the number of positive examples of each finding in targets [N, F] (NaN: not)."""
  return (np.nan_to_num(targets, nan=0.0) >= 0.5).sum(axis=0)


def warn_missing_positives(job_name: str, names, train_positives: dict,
                           test_positives) -> list[str]:
  """Logs (and returns) the findings without a positive in the cell's train subset or in
  test: such a finding's classifier only learns "absent", and without a test positive its
  AUROC and AP are NaN and left out of the means (the report lists them)."""
  missing = [f'{n} (train subset)' for n in names if train_positives[n] == 0]
  missing += [f'{n} (test split)' for n, count in zip(names, test_positives) if count == 0]
  if missing:
    log.warning('%s: no positive example of %s; their AUROC / AP are NaN where the test '
                'split has none, and the means are over the other findings', job_name,
                ', '.join(missing))
  return missing


def save_embeddings(config, programs: Programs, init: str, encoder_vars, data: EvalData,
                    workdir: Path) -> Path:
  """<workdir>/embeddings/<init>.npz: the test split's pooled features by the regime's
  encoder before fine-tuning (scratch: the random encoder of seed 0), for the report's UMAP
  figure (config.explain.umap). Written once: kept when it exists.

  Arrays: embeddings [N, C] float32, labels [N], ids [N] (test indices), patient_ids [N],
  class_names [K]."""
  path = workdir / 'embeddings' / f'{init}.npz'
  if path.exists():
    return path
  if data.multilabel:  # the UMAP colours one class per image: not defined for findings
    log.warning('config.explain.umap: no embeddings for a multi-label findings task')
    return path
  params, batch_stats = classifier_variables(programs.model, config.seed, 0, data.channels,
                                             encoder_vars, init)
  embeddings = programs.features({'params': params, 'batch_stats': batch_stats},
                                 data.test['image'])
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_npz(path, embeddings=np.asarray(embeddings, np.float32), labels=data.test['label'],
             ids=np.arange(len(data.test['label'])), patient_ids=data.test['patient_id'],
             class_names=np.asarray(list(data.class_names)))
  return path


def explained_finding(config, data: EvalData) -> int:
  """The index (in data.class_names) of the finding a multi-label task's Grad-CAM
  explains: config.explain.finding, '' = the first."""
  name = config.explain.finding
  if not name:
    return 0
  if name not in data.class_names:
    raise ValueError(f'config.explain.finding={name!r} is not one of the fine-tuned '
                     f'findings {list(data.class_names)}')
  return list(data.class_names).index(name)


def explain(config, model, variables, data: EvalData, directory: Path):
  """Grad-CAM attention inside the lung masks of the images config.explain names (the
  test split by default) -> attention.npz; `cxr_jax.attention_job` does the work.

  A multi-label task explains one finding (`explained_finding`) as a two-class
  classifier (`heads.FindingView`: class 1 = present); its unobserved targets count as
  absent here."""
  if data.explain_images is None:  # read (and segmented) once per run
    data.explain_images = attention_job.explain_set(
        config.explain, data, data.data_dir, config.finetune.data.test_split,
        config.eval_batch_size)
  images = data.explain_images
  if data.multilabel:
    finding = explained_finding(config, data)
    model = heads.FindingView(classifier=model, finding=finding)
    variables = {k: {'classifier': v} for k, v in variables.items()}
    if images.labels is not None:  # the test split's targets: present / absent
      images = dataclasses.replace(images, labels=(
          np.nan_to_num(images.labels[:, finding], nan=0.0) >= 0.5).astype(np.int64))
  result = attention_job.explain_cell(config.explain, model, variables, images,
                                      config.finetune.image_size, config.eval_batch_size,
                                      str(directory), stem=config.model.stem)
  if result is not None:
    save_npz(directory / 'attention.npz', **result)
