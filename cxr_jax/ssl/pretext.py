"""Pieces shared by the pretext tasks (`cxr_jax.ssl.PRETEXT_TASKS`): the classifier model
of the tasks that classify (rotation, jigsaw, relative position), the cross-entropy they
share, and the cutting of jittered tiles from a grid of cells (jigsaw, relative position).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from cxr_jax.models import heads

# the smallest tile/patch side (px) a task may cut: the ResNets (SAME padding) take any
# size, but below 8 px even the 'small' stem's first stage sees a single pixel
MIN_TILE = 8


class PretextClassifier(nn.Module):
  """Encoder + MLP classifier over the concatenated features of `num_inputs` inputs per
  example (rotation: 1 image; relative position: 2 patches; jigsaw: 9 tiles, siamese).

  Parameter subtrees: 'encoder' and 'head' (a `heads.ProjectionMLP`: Dense-BN-ReLU
  hidden layers, then Dense to `num_classes` logits).
  """
  encoder: nn.Module
  head: nn.Module
  num_inputs: int = 1

  def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Whole images [B, H, W, C] -> {'features': pooled encoder features [B, C]} (what the
    monitors and `embed` read); at init also creates the head's parameters."""
    features = self.encoder(x, train=train)
    if self.is_initializing():
      self.head(jnp.zeros((1, features.shape[-1] * self.num_inputs), features.dtype),
                train=False)
    return {'features': features}

  def classify(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Inputs [B * num_inputs, h, w, C], the inputs of an example consecutive ->
    {'features': [B * num_inputs, C], 'logits': [B, num_classes]}. All inputs go through
    the encoder in one pass (BatchNorm sees all of them)."""
    features = self.encoder(x, train=train)
    grouped = features.reshape(features.shape[0] // self.num_inputs, -1)
    return {'features': features, 'logits': self.head(grouped, train=train)}


def classifier_model(encoder, cfg, num_classes: int, num_inputs: int = 1):
  """A `PretextClassifier` with cfg.head_hidden_dim and cfg.head_layers (Dense layers)."""
  head = heads.ProjectionMLP(cfg.head_hidden_dim, num_classes, num_layers=cfg.head_layers)
  return PretextClassifier(encoder=encoder, head=head, num_inputs=num_inputs)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer labels, in float32."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels))


def classification_loss(model, params, batch_stats, x, labels, num_inputs: int):
  """The `loss_fn` result of a classifying task: cross-entropy of `model.classify(x)`
  against `labels` [B]; metrics loss and accuracy; aux['features'] the features of each
  example's first input [B, C]."""
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                             mutable=['batch_stats'], method=PretextClassifier.classify)
  logits = out['logits']
  loss = cross_entropy(logits, labels)
  accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  features = out['features'][::num_inputs]
  return loss, (updates['batch_stats'], {'loss': loss, 'accuracy': accuracy},
                {'features': features})


def grid_geometry(image_size: int, fraction: float, what: str, key: str):
  """(cell, tile) sides in px of a 3 x 3 grid over an image_size square: cell =
  image_size // 3, tile = floor(fraction * cell) (the rest of the cell is the gap and the
  room for jitter). ValueError naming `key` when the tile is under MIN_TILE px."""
  cell = image_size // 3
  tile = int(fraction * cell)
  if tile < MIN_TILE or tile > cell:
    raise ValueError(f'{key}: a {what} of {tile} px at a view size of {image_size} px '
                     f'(cell {cell} px x fraction {fraction}); it must be in '
                     f'[{MIN_TILE}, cell] px: raise the stage image_size or the fraction')
  return cell, tile


def cut_tiles(images: jax.Array, cells: jax.Array, offsets: jax.Array, cell: int,
              tile: int) -> jax.Array:
  """Tiles of a 3 x 3 grid: for example b and entry n, the tile x tile square whose
  top-left corner is at cell cells[b, n] (index r * 3 + c) plus offsets[b, n] (dy, dx).

  Args:
    images: [B, S, S, C].
    cells: [B, N] int32 cell indices in [0, 9).
    offsets: [B, N, 2] int32 jitter inside the cell, in [0, cell - tile].
  Returns:
    [B, N, tile, tile, C].
  """
  def one(image, cell_index, offset):
    y = (cell_index // 3) * cell + offset[0]
    x = (cell_index % 3) * cell + offset[1]
    return jax.lax.dynamic_slice(image, (y, x, 0), (tile, tile, image.shape[-1]))
  per_image = jax.vmap(one, in_axes=(None, 0, 0))
  return jax.vmap(per_image)(images, cells, offsets)


def jitter(rng, shape, cell: int, tile: int) -> jax.Array:
  """Uniform integer offsets in [0, cell - tile] of `shape` + (2,) (dy, dx)."""
  return jax.random.randint(rng, tuple(shape) + (2,), 0, cell - tile + 1, jnp.int32)


def normalise(tiles: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Each tile [..., t, t, C] to zero mean and unit variance over its pixels and channels:
  (x - mean) / sqrt(var + eps)."""
  mean = jnp.mean(tiles, axis=(-3, -2, -1), keepdims=True)
  var = jnp.mean((tiles - mean) ** 2, axis=(-3, -2, -1), keepdims=True)
  return (tiles - mean) * jax.lax.rsqrt(var + eps)
