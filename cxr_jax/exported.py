"""A trained classifier outside its workdir: `load_model(DIR)` of an exported model folder
(`python -m cxr_jax.export`), or `from_workdir(W)` for a run's fine-tuned job in memory.

  model = cxr_jax.load_model('exported/')
  x = model.preprocess('scan.dcm')           # uint8 [S, S, 1], exactly as preparation stores it
  probs = model.predict(x[None])             # [N, K] float32
  maps = model.gradcam(x[None])              # [N, h, w] Grad-CAM of the predicted class

A model folder holds `weights.msgpack` ({'params', 'batch_stats'}, flax msgpack),
`model.json` (architecture, sizes, class names, preprocessing, provenance) and `README.md`
(its model card); `model.onnx` with `--onnx`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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
    import jax
    import jax.numpy as jnp
    import ml_collections
    from cxr_jax.explain import gradcam as gradcam_lib
    from cxr_jax.models import heads
    from cxr_jax.train import inference
    from cxr_jax.train import sharding
    from cxr_jax.train import state as state_lib

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
    from cxr_jax.data import imageio
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
    from cxr_jax.train import inference
    model, variables, multilabel = self.module, self.variables, self.multilabel
    return lambda x: inference.probs_of_inputs(model, variables, x, multilabel)


def load_model(directory, batch_size: int = 32) -> Model:
  """The model of an exported folder (`python -m cxr_jax.export`)."""
  from flax import serialization
  directory = Path(directory)
  meta_path, weights_path = directory / MODEL_JSON, directory / WEIGHTS
  for p in (meta_path, weights_path):
    if not p.exists():
      raise FileNotFoundError(f'{directory} is not an exported model: no {p.name} '
                              '(write one with python -m cxr_jax.export --workdir=W --out=DIR)')
  meta = json.loads(meta_path.read_text())
  variables = serialization.msgpack_restore(weights_path.read_bytes())
  return Model(meta, variables, batch_size=batch_size)
