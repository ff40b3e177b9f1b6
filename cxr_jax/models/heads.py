"""Heads on top of an encoder: SSL projector/predictor and the classifier.

`SSLModel` (pretraining) and `ClassifierModel` (fine-tuning) both keep the
encoder's parameters under the subtree 'encoder', so fine-tuning starts from a
pretrained encoder by copying `params['encoder']` (and
`batch_stats['encoder']`) from one variable tree into the other.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _batch_norm(train: bool, dtype: Dtype, axis_name: str | None, name: str):
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                      epsilon=_BN_EPSILON, dtype=dtype, axis_name=axis_name,
                      name=name)


class ProjectionMLP(nn.Module):
  """SimCLR v2 projection head: (Dense -> BN -> ReLU) x (L-1) -> Dense.

  Layers are named 'dense0', 'bn0', ..., 'dense{L-1}'. Dense layers followed
  by BN have no bias (BN's shift makes it redundant), as in SimCLR v2.

  Attributes:
    hidden_dim: width of the hidden layers.
    out_dim: output dimension D.
    num_layers: number of Dense layers L (>= 1); SimCLR v2 uses 3.
    use_bn: BatchNorm after each hidden Dense.
    dtype: compute dtype; parameters stay float32.
    axis_name: BatchNorm's cross-device axis (None under jit, see resnet.py).
  """
  hidden_dim: int
  out_dim: int
  num_layers: int = 3
  use_bn: bool = True
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Features [B, C] -> projections [B, out_dim]."""
    if self.num_layers < 1:
      raise ValueError(
          f'ProjectionMLP needs num_layers >= 1, got {self.num_layers}.')
    for i in range(self.num_layers - 1):
      x = nn.Dense(self.hidden_dim, use_bias=not self.use_bn, dtype=self.dtype,
                   name=f'dense{i}')(x)
      if self.use_bn:
        x = _batch_norm(train, self.dtype, self.axis_name, f'bn{i}')(x)
      x = nn.relu(x)
    return nn.Dense(self.out_dim, dtype=self.dtype,
                    name=f'dense{self.num_layers - 1}')(x)


class Predictor(nn.Module):
  """BYOL predictor q: Dense -> BN -> ReLU -> Dense ([B, D] -> [B, out_dim]).

  Attributes:
    hidden_dim: hidden width (BYOL: 4096).
    out_dim: output dimension (BYOL: 256, the projection's dimension).
    dtype: compute dtype; parameters stay float32.
    axis_name: BatchNorm's cross-device axis (None under jit).
  """
  hidden_dim: int
  out_dim: int
  dtype: Dtype = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Projections [B, D] -> predictions [B, out_dim]."""
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype,
                 name='dense0')(x)
    x = nn.relu(_batch_norm(train, self.dtype, self.axis_name, 'bn0')(x))
    return nn.Dense(self.out_dim, dtype=self.dtype, name='dense1')(x)


class SSLModel(nn.Module):
  """Encoder + projector (+ predictor) for self-supervised pretraining.

  Parameter subtrees: 'encoder', 'projector' and, when given, 'predictor'.

  Attributes:
    encoder: maps images [B, H, W, Cin] to features [B, C] with
      `encoder(x, train=...)` (e.g. a `ResNet` with num_classes=None).
    projector: maps [B, C] to [B, D] with `projector(h, train=...)`.
    predictor: optional (BYOL-style), maps [B, D] to [B, D].
  """
  encoder: nn.Module
  projector: nn.Module
  predictor: nn.Module | None = None

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Images [B, H, W, Cin] -> dict of arrays.

    Returns:
      {'features': [B, C], 'projection': [B, D]} plus 'prediction' [B, D]
      when the model has a predictor.
    """
    features = self.encoder(x, train=train)
    projection = self.projector(features, train=train)
    out = {'features': features, 'projection': projection}
    if self.predictor is not None:
      out['prediction'] = self.predictor(projection, train=train)
    return out


class ClassifierModel(nn.Module):
  """Encoder + linear head for supervised fine-tuning and Grad-CAM.

  Parameter subtrees: 'encoder' (same structure as in `SSLModel`) and 'head'.

  Attributes:
    encoder: a `ResNet` with num_classes=None (anything with
      `feature_map(x, train)` -> [B, h, w, C] and `pool(fmap)` -> [B, C],
      and `__call__` equal to their composition).
    num_classes: number of classes K.
  """
  encoder: nn.Module
  num_classes: int

  def setup(self):
    if getattr(self.encoder, 'num_classes', None) is not None:
      raise ValueError(
          'ClassifierModel needs an encoder without its own head '
          f'(num_classes=None), got num_classes={self.encoder.num_classes}.')
    self.head = nn.Dense(self.num_classes, dtype=getattr(
        self.encoder, 'dtype', jnp.float32))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Images [B, H, W, Cin] -> logits [B, K]."""
    return self.head(self.encoder(x, train=train))

  def feature_map(self, x: jax.Array, train: bool = False,
                  stage: int | None = None) -> jax.Array:
    """Images [B, H, W, Cin] -> the encoder's map after `stage` (None: the last)
    [B, h, w, C]."""
    if stage is None:
      return self.encoder.feature_map(x, train)
    return self.encoder.feature_map(x, train, last_stage=stage)

  def logits_from_feature_map(self, fmap: jax.Array, stage: int | None = None) -> jax.Array:
    """The map after `stage` (None: the last) -> logits [B, K]: the remaining stages
    (inference mode), global pool and head."""
    if stage is not None and stage < len(self.encoder.stage_sizes):
      fmap = self.encoder.feature_map(fmap, False, first_stage=stage + 1)
    return self.head(self.encoder.pool(fmap))


class FindingView(nn.Module):
  """One finding of a multi-label `ClassifierModel` seen as a two-class classifier, for
  Grad-CAM and the attention analysis: logits [-z/2, z/2] of the finding's logit z, whose
  softmax is [1 - sigmoid(z), sigmoid(z)] (class 1 = present, class 0 = absent; the
  Grad-CAM of class 0 is the evidence against the finding).

  Its variables are the classifier's under 'classifier':
  {'params': {'classifier': params}, 'batch_stats': {'classifier': batch_stats}}.
  """
  classifier: ClassifierModel
  finding: int

  def _two_class(self, logits: jax.Array) -> jax.Array:
    z = logits[:, self.finding:self.finding + 1]
    return jnp.concatenate([-0.5 * z, 0.5 * z], axis=-1)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self._two_class(self.classifier(x, train=train))

  def feature_map(self, x: jax.Array, train: bool = False,
                  stage: int | None = None) -> jax.Array:
    return self.classifier.feature_map(x, train, stage=stage)

  def logits_from_feature_map(self, fmap: jax.Array, stage: int | None = None) -> jax.Array:
    return self._two_class(self.classifier.logits_from_feature_map(fmap, stage=stage))
