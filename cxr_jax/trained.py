"""Rebuilding a trained model: the one way every tool does it (`cxr_jax.cli.export` is the
writer of model folders, this module the loader).

  load_model(DIR)                 a classifier from an exported model folder
  from_workdir(W, job=None)       a classifier from a run's finished fine-tuning job (its
                                  selected weights best.msgpack; default job: the best by
                                  val_score, `select_job`), in memory
  from_stage(W, stage, folder)    the SSL model of a finished pretraining stage (its last
                                  Orbax checkpoint)

The model is rebuilt from W/config.json (or model.json) and the weights are read directly:
no labelled data is read and no training program compiled.

  model = cxr_jax.load_model('exported/')
  x = model.preprocess('scan.dcm')           # uint8 [S, S, 1], exactly as preparation stores it
  probs = model.predict(x[None])             # [N, K] float32
  maps = model.gradcam(x[None])              # [N, h, w] Grad-CAM of the predicted class

A model folder holds `weights.msgpack` ({'params', 'batch_stats'}, flax msgpack),
`model.json` (architecture, sizes, class names, preprocessing, provenance) and `README.md`
(its model card); `model.onnx` with `--onnx`.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from cxr_jax import configuration
from cxr_jax import pretraining
from cxr_jax import regimes
from cxr_jax import ssl
from cxr_jax import vocab
from cxr_jax.data import imageio
from cxr_jax.explain import gradcam as gradcam_lib
from cxr_jax.files import BEST_WEIGHTS
from cxr_jax.files import load_weights
from cxr_jax.models import heads
from cxr_jax.report import loading
from cxr_jax.train import inference
from cxr_jax.train import compute
from cxr_jax.train import loop
from cxr_jax.train import sharding
from cxr_jax.train import state as state_lib

WEIGHTS = 'weights.msgpack'
MODEL_JSON = 'model.json'

PREPROCESSING = (
    'cxr_jax.data.imageio.load_for_model(path, storage_size), the function preparation '
    'uses: decode (PNG/JPEG 8/16-bit, RGB/RGBA -> BT.601 luma; DICOM: modality LUT, VOI LUT '
    'or window, BitsStored range, MONOCHROME1 inverted) to gray in [0, 1]; area resize so '
    'the long side is storage_size, aspect kept; centred zero padding to a square; uint8. '
    'Then, inside the model: /255 and cxr_jax.data.augment.resize to image_size.')


class Model:
  """A classifier (a `cxr_jax.models.ClassifierModel`) with its weights and metadata.

  Attributes:
    class_names: the K class names, in the order of the probability columns (multi-label:
      the findings, one sigmoid probability each).
    multilabel: the model predicts findings (meta 'task' == 'findings').
    image_size: the side the network sees (config.finetune.image_size).
    storage_size: the side images are stored/preprocessed at (the prepared dataset's).
    channels: input channels.
    job: the fine-tuning job the weights come from (e.g. 'finetune/curricular/1/seed0').
    meta: the whole model.json dict.
  """

  def __init__(self, meta: dict, variables: dict, batch_size: int = 32):
    self.meta = meta
    self.class_names = list(meta['class_names'])
    self.multilabel = meta.get('task') == 'findings'
    self.image_size = int(meta['image_size'])
    self.storage_size = int(meta['storage_size'])
    self.channels = int(meta['channels'])
    self.job = meta.get('provenance', {}).get('job', '')
    self.batch_size = int(batch_size)
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.module = heads.ClassifierModel(
        encoder=state_lib.encoder_from_config(ml_collections.ConfigDict(meta['architecture'])),
        num_classes=len(self.class_names))
    model, size = self.module, self.image_size
    mesh = sharding.make_mesh()

    def cams(variables, images):
      x = inference.model_inputs(images, size)
      fmap_fn = lambda z: model.apply(variables, z, train=False, method=model.feature_map)
      head_fn = lambda a: model.apply(variables, a, method=model.logits_from_feature_map)
      return gradcam_lib.gradcam(fmap_fn, head_fn, x).astype(jnp.float32)

    batched = lambda fn: inference.batched_apply(jax.jit(fn), mesh, self.batch_size)
    self._inputs = batched(lambda variables, images: inference.model_inputs(images, size))
    self._predict = batched(inference.probabilities(model, size, self.multilabel))
    self._gradcam = batched(cams)

  # -- preprocessing ------------------------------------------------------------------
  def preprocess(self, path) -> np.ndarray:
    """A PNG/JPEG/DICOM file -> uint8 [S, S, 1] through preparation's own function.

    Raises FileNotFoundError / cxr_jax.data.errors.UnreadableImageError naming the file."""
    image = imageio.load_for_model(path, self.storage_size)
    if self.channels != image.shape[-1]:
      image = np.repeat(image, self.channels, axis=-1)
    return image

  def _batched(self, fn, images):
    """fn(variables, images) over a whole array in fixed, batch-sharded batches."""
    images = self._check(images)
    if not len(images):
      return np.zeros((0,), np.float32)
    return fn(self.variables, images)

  def _check(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != self.channels or images.dtype != np.uint8:
      raise ValueError(f'images must be uint8 [N, H, W, {self.channels}] (e.g. from '
                       f'.preprocess), got {images.dtype} {images.shape}')
    return images

  # -- the model ------------------------------------------------------------------------
  def model_inputs(self, images) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, image_size, image_size, C] in [0, 1]: what the
    network (and model.onnx) takes."""
    return self._batched(self._inputs, images).astype(np.float32)

  def predict(self, images) -> np.ndarray:
    """uint8 [N, H, W, C] images (as `preprocess` returns, stacked) -> probabilities
    [N, K] float32."""
    return self._batched(self._predict, images).astype(np.float32)

  def gradcam(self, images) -> np.ndarray:
    """Grad-CAM maps of the predicted class, [N, image_size, image_size] float32 (not
    normalised; cxr_jax/explain/gradcam.py, the classifier's last stage)."""
    return self._batched(self._gradcam, images).astype(np.float32)

  def probs_function(self):
    """f(x float32 [B, image_size, image_size, C] in [0, 1]) -> probs [B, K], the weights
    closed over: preprocessing-free (what --onnx exports)."""
    model, variables, multilabel = self.module, self.variables, self.multilabel
    return lambda x: inference.probs_of_inputs(model, variables, x, multilabel)


def load_model(directory, batch_size: int = 32) -> Model:
  """The model of an exported folder (`python -m cxr_jax.cli.export`)."""
  directory = Path(directory)
  meta_path, weights_path = directory / MODEL_JSON, directory / WEIGHTS
  for p in (meta_path, weights_path):
    if not p.exists():
      raise FileNotFoundError(f'{directory} is not an exported model: no {p.name} '
                              '(write one with python -m cxr_jax.cli.export --workdir=W --out=DIR)')
  meta = json.loads(meta_path.read_text())
  variables = serialization.msgpack_restore(weights_path.read_bytes())
  return Model(meta, variables, batch_size=batch_size)


def _results(workdir: Path) -> list[dict]:
  results = [r for r in loading.load_results(workdir) if r['protocol'] == 'finetune']
  return [r for rs in loading.group_results(results).values() for r in rs]  # report order


def _job_name(result: dict, workdir: Path) -> str:
  return Path(result['_dir']).relative_to(workdir).as_posix()


def select_job(workdir, job: str | None = None) -> dict:
  """The result.json dict (with '_dir') of `job`, or of the best fine-tuned job by
  val_score (ties: the first in report order)."""
  workdir = Path(workdir)
  results = _results(workdir)
  if job:
    job = job.strip('/')
    for r in results:
      if _job_name(r, workdir) == job:
        return r
    names = ', '.join(_job_name(r, workdir) for r in results) or 'none'
    raise ValueError(f'--job={job}: no finished fine-tuning job of that name in {workdir} '
                     f'(finished finetune jobs: {names})')
  if not results:
    raise ValueError(f'{workdir} has no finished fine-tuning job (a finetune/<init>/'
                     '<fraction>/seed<k>/result.json); only protocol finetune jobs export')
  score = lambda r: (float(r['val_score']) if r.get('val_score') is not None
                     and np.isfinite(float(r['val_score'])) else -np.inf)
  return max(results, key=score)  # max keeps the first of ties: report order


def code_version() -> dict:
  """{'cxr_jax': version, 'git_commit': hash or None} of the code running now."""
  try:
    from importlib import metadata  # only here: the installed package's version
    version = metadata.version('cxr_jax')
  except Exception:  # not installed: read setup.cfg beside the package
    version = None
    cfg = Path(__file__).resolve().parents[1] / 'setup.cfg'
    if cfg.exists():
      for line in cfg.read_text().splitlines():
        if line.replace(' ', '').startswith('version='):
          version = line.split('=', 1)[1].strip()
          break
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=Path(__file__).resolve().parent,
                            capture_output=True, text=True, timeout=10).stdout.strip() or None
  except Exception:
    commit = None
  return {'cxr_jax': version, 'git_commit': commit}


def load_job(workdir, job: str | None = None) -> tuple[dict, dict, dict]:
  """(model.json dict, variables, result dict) of a workdir's job (default: `select_job`)."""
  workdir = Path(workdir)
  result = select_job(workdir, job)
  name = _job_name(result, workdir)
  weights = Path(result['_dir']) / BEST_WEIGHTS
  if not weights.exists() or 'image_shape' not in result:
    raise FileNotFoundError(
        f'{name}: no {BEST_WEIGHTS} (or no image_shape in its result.json): '
        'the job was run by a cxr_jax that did not keep its selected weights. Delete its '
        f'result.json ({Path(result["_dir"]) / "result.json"}) and run the same command '
        'again to redo that job, then export.')
  config_path = workdir / 'config.json'
  config_bytes = config_path.read_bytes()
  config = json.loads(config_bytes)
  shape = [int(d) for d in result['image_shape']]
  meta = {
      'format': 'cxr_jax model 1',
      'architecture': dict(config['model']),
      'num_classes': len(result['class_names']),
      'class_names': list(result['class_names']),
      'image_size': int(config['finetune']['image_size']),
      'storage_size': shape[0],
      'channels': shape[-1],
      'input': 'uint8 [N, storage_size, storage_size, channels] from preprocess(path)',
      'preprocessing': PREPROCESSING,
      'task': result.get('task', 'label'),  # 'findings': multi-label, one sigmoid each
      'output': ('sigmoid probabilities [N, num_classes], one per finding, columns in '
                 'class_names order' if result.get('task') == 'findings' else
                 'softmax probabilities [N, num_classes], columns in class_names order'),
      'training': {k: result.get(k) for k in ('protocol', 'init', 'label_fraction', 'seed',
                                              'num_train', 'best_step', 'val_score')},
      'data': dict(config['finetune']['data']),
      'test': result['test'],
      'provenance': {'job': name, 'workdir': str(workdir.resolve()),
                     'config_sha256': hashlib.sha256(config_bytes).hexdigest(),
                     'config': config, **code_version()},
  }
  variables = load_weights(weights)
  return meta, variables, result


def from_workdir(workdir, job: str | None = None, batch_size: int = 32) -> Model:
  """The classifier of a workdir's finished fine-tuning job (default: `select_job`, the
  best by val_score), rebuilt from W/config.json with its selected weights
  (best.msgpack): no data read, no training program compiled."""
  meta, variables, _ = load_job(workdir, job)
  return Model(meta, variables, batch_size=batch_size)


def config_from_json(path: Path) -> ml_collections.ConfigDict:
  """The ConfigDict of a workdir's config.json (without its 'amendments')."""

  def convert(value):
    if isinstance(value, dict):
      return ml_collections.ConfigDict({k: convert(v) for k, v in value.items()})
    if isinstance(value, list):
      return [convert(v) for v in value]
    return value

  saved = configuration.read_config_json(Path(path))
  saved.pop('amendments', None)
  return convert(saved)


def from_stage(workdir, stage: str, folder: str = 'pretrain', config=None):
  """(SSL model, its trained {'params', 'batch_stats'}, the stage's last view size) of a
  finished pretraining stage of `workdir` (`folder`: pretrain | pretrain_ssl |
  pretrain_ssl_matched | pretrain_alone_<method> | pretrain_curriculum_<name> |
  pretrain_ssl_matched_<name>: vocab.pretrain_folder of a regime): the model rebuilt from W/config.json (or `config`), the weights
  from the stage's last Orbax checkpoint, which must be at the stage's final step.

  Raises ValueError naming the stage when it is unknown or unfinished."""
  workdir = Path(workdir)
  config = config if config is not None else config_from_json(workdir / 'config.json')
  regime = vocab.regime_of_folder(folder)
  if regime is None:
    raise ValueError(f'--folder={folder!r} is not a pretraining folder: pretrain, '
                     'pretrain_ssl, pretrain_ssl_matched, pretrain_alone_<method>, '
                     'pretrain_curriculum_<name> or pretrain_ssl_matched_<name>')
  plan = regimes.regime_plan(config, regime)
  config = plan.config
  if plan.reference is not None:  # a matched regime: its stage ran longer than its steps
    steps = None
    if config.pretrain.get('match', 'images') == 'flops':  # its length: in its compute.json
      record = compute.read_record(workdir / folder / stage)
      if record is None:
        raise ValueError(f'{folder}/{stage} has no {compute.FILE}: its length (matched by '
                         'FLOPs) is unknown')
      steps = record['steps']
    config = regimes.matched_config(config, steps=steps, reference=plan.reference)
  names = [s.name for s in config.pretrain.stages]
  if stage not in names:
    raise ValueError(f'--stage={stage!r} is not a stage of {workdir}; stages: {names}')
  index = names.index(stage)
  spec = config.pretrain.stages[index]
  directory = workdir / folder / stage
  steps = loop.saved_steps(directory)
  if not steps or steps[-1] < spec.steps:
    raise ValueError(f'{folder}/{stage} is not finished: its last checkpoint is at step '
                     f'{steps[-1] if steps else "none"} of {spec.steps} (under '
                     f'{loop.checkpoint_dir(directory)})')
  # the saved TrainState as a tree of arrays (no template: nothing to initialise or compile)
  restored = loop.checkpoint_manager(directory).restore(
      steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
  name = ssl.stage_method(config.pretrain, index)  # the stage's own method, if it names one
  model = ssl.get_method(name).build_model(state_lib.encoder_from_config(config.model),
                                           config.pretrain[name])
  size = int(pretraining.image_sizes(spec.image_size, spec.steps, 'image_size')[-1])
  return model, {'params': restored['params'], 'batch_stats': restored['batch_stats']}, size
