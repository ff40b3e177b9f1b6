"""A trained lung segmenter (`python -m cxr_jax.cli.segment` writes it): the U-Net applied to
images of any size, and `load(folder)` of what training wrote; `mask_choice` reads
config.explain.masks ('dataset' or 'segmenter:<folder>').
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax import files
from cxr_jax.data import augment
from cxr_jax.models.unet import UNet
from cxr_jax.train import workdir as workdir_lib

WEIGHTS = 'weights.msgpack'
META = 'segmenter.json'
SEGMENTER_PREFIX = 'segmenter:'


def mask_choice(masks: str) -> tuple[str, str]:
  """('dataset', '') or ('segmenter', folder) from config.explain.masks; ValueError else."""
  if masks == 'dataset':
    return 'dataset', ''
  if masks.startswith(SEGMENTER_PREFIX) and masks[len(SEGMENTER_PREFIX):].strip():
    return 'segmenter', masks[len(SEGMENTER_PREFIX):].strip()
  raise ValueError(f"config.explain.masks={masks!r}: 'dataset' (the set's own lung masks) "
                   "or 'segmenter:<folder written by python -m cxr_jax.cli.segment>'")


class Segmenter:
  """A trained U-Net and its input size; `predict_masks` on any images."""

  def __init__(self, variables, features, image_size: int, meta: dict | None = None):
    self.model = UNet(features=tuple(features))
    self.variables = variables
    self.image_size = int(image_size)
    self.meta = meta or {}

  def predict_masks(self, images, batch_size: int = 32) -> np.ndarray:
    """Lung masks of images [N, H, W, C] (uint8/uint16, or float in [0, 1]; C channels
    averaged to gray), at their own size: [N, H, W] uint8 in {0, 1}."""
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f'images must be [N, H, W, C], got {images.shape}')
    n, h, w = images.shape[:3]
    size = self.image_size

    @jax.jit
    def masks_of(variables, batch):
      x = augment.resize(augment.to_float(batch).mean(axis=-1, keepdims=True), size)
      logits = self.model.apply(variables, x, train=False)
      back = jax.image.resize(logits, (logits.shape[0], h, w), method='bilinear')
      return (back > 0).astype(jnp.uint8)

    bs = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, bs):
      chunk = images[start:start + bs]
      count = len(chunk)
      if count < bs:  # one compiled shape
        chunk = np.concatenate([chunk, np.zeros((bs - count,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(masks_of(self.variables, chunk))[:count])
    return np.concatenate(out)


def save(workdir: Path, variables, features, image_size: int, meta: dict):
  files.save_weights(workdir / WEIGHTS, variables)
  workdir_lib.write_text(workdir / META, json.dumps(
      dict(meta, architecture='unet', features=list(features), image_size=int(image_size)),
      indent=2))


def load(folder) -> Segmenter:
  """The segmenter `python -m cxr_jax.cli.segment` wrote to `folder`."""
  folder = Path(folder)
  if not (folder / WEIGHTS).exists() or not (folder / META).exists():
    raise FileNotFoundError(f'{folder}: no trained segmenter ({WEIGHTS} and {META}); train '
                            'one with python -m cxr_jax.cli.segment --workdir=FOLDER --train=...')
  meta = json.loads((folder / META).read_text())
  return Segmenter(files.load_weights(folder / WEIGHTS), meta['features'],
                   meta['image_size'], meta)
