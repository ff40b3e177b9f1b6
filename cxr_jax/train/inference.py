"""Applying a model to whole arrays of images: fixed-size, batch-sharded, one compilation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from cxr_jax.data import augment
from cxr_jax.train import sharding


def batched_apply(fn, mesh, batch_size: int):
  """Wraps a jit-compiled fn(variables, images [B,H,W,C] uint8) -> [B, ...] into a function of
  a whole numpy array, run in fixed-size, batch-sharded batches (one compilation)."""

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


def model_inputs(images, image_size: int):
  """uint8 [B, H, W, C] -> float32 [B, image_size, image_size, C] in [0, 1]."""
  return augment.resize(images.astype(jnp.float32) / 255.0, image_size)


def probs_of_inputs(model, variables, x, multilabel: bool = False):
  """Softmax of a classifier on float inputs already at its size, in [0, 1]: [B, K]
  float32 whatever the model's compute dtype (multilabel: one sigmoid per finding)."""
  logits = model.apply(variables, x, train=False).astype(jnp.float32)
  return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)


def probabilities(model, image_size: int, multilabel: bool = False):
  """probs(variables, images uint8 [B,H,W,C]) -> [B,K] (not jitted: callers jit it)."""
  return lambda variables, images: probs_of_inputs(model, variables,
                                                   model_inputs(images, image_size),
                                                   multilabel)


def make_predict(model, image_size: int, mesh, batch_size: int, multilabel: bool = False):
  """predict(variables, images uint8 [N,H,W,C]) -> class probabilities [N,K] (numpy,
  float32 whatever the model's compute dtype; per-finding sigmoids with multilabel)."""
  return batched_apply(jax.jit(probabilities(model, image_size, multilabel)), mesh,
                       batch_size)


def make_features(model, image_size: int, mesh, batch_size: int, encoder_only: bool = False):
  """features(variables, images uint8 [N,H,W,C]) -> pooled encoder features [N,C] (numpy).

  encoder_only: apply `model.encoder` alone (a classifier's encoder); else the model's
  'features' output (an SSL model). Float32 whatever the model's compute dtype."""
  @jax.jit
  def features(variables, images):
    x = model_inputs(images, image_size)
    if encoder_only:
      f = model.apply(variables, x, method=lambda m, x: m.encoder(x, train=False))
    else:
      f = model.apply(variables, x, train=False)['features']
    return f.astype(jnp.float32)
  return batched_apply(features, mesh, batch_size)
