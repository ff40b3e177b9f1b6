"""Inpainting, a context encoder for CNNs (Pathak, Krähenbühl, Donahue, Darrell, Efros;
CVPR 2016).

A square of mask_fraction x the view's side (0.5: a quarter of the area, the paper's
central region) is blanked in each view (the stage's view size, lightly augmented at the
stage's strength) and filled with the view's mean grey level (the paper fills with the
mean pixel value); the encoder's last feature map goes through a light convolutional
decoder (nearest-neighbour upsampling x2 then 3x3 conv-BN-ReLU, as many times as the
encoder downsamples, then a 3x3 conv and a sigmoid) that reconstructs the whole view,
and the loss is the mean squared error over the masked pixels, plus outside_weight times
the mean squared error over the others (0 by default: the paper's L2 is on the hole).
The square sits at a random place per image ('random', the paper's random-block variant,
which it found to give better features than the fixed centre) or in the centre.

Why a context encoder and not masked-image modelling with random patches: a CNN's
convolutions see across the border of every small masked patch, so many small holes leak
their content through the unmasked neighbours and need sparse convolutions (SparK) to
stay a task; one large hole is the form of the task a plain ResNet can learn from, and it
is the period's own reconstruction task, alongside the other pretext tasks here.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.data import augment
from cxr_jax.ssl import common

POSITIONS = ('random', 'center')

VIEWS_PER_IMAGE = 1  # one masked view (compute accounting)
DEFAULTS = ml_collections.ConfigDict(dict(
    mask_fraction=0.5,      # side of the masked square / side of the view (paper: 0.5)
    position='random',      # 'random' (a place per image) or 'center'
    outside_weight=0.0,     # weight of the reconstruction error outside the square
    decoder_width=64,       # channels of the decoder's first layer (halved per layer, >= 8)
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def check(cfg, image_size: int, key: str):
  side = mask_side(cfg, image_size)
  if not 1 <= side < image_size:
    raise ValueError(f'{key}.mask_fraction={cfg.mask_fraction}: the masked square is {side} '
                     f'px at a view size of {image_size} px; it must be in [1, {image_size})')
  if cfg.position not in POSITIONS:
    raise ValueError(f'{key}.position must be one of {POSITIONS}, got {cfg.position!r}')
  if cfg.outside_weight < 0:
    raise ValueError(f'{key}.outside_weight must be >= 0, got {cfg.outside_weight}')


def mask_side(cfg, image_size: int) -> int:
  return int(round(cfg.mask_fraction * image_size))


class Decoder(nn.Module):
  """Feature map [B, h, w, C] -> image [B, S, S, channels] in (0, 1): `upsamplings` times
  (nearest x2, 3x3 conv, BN, ReLU; width halving from `width`, at least 8), a bilinear
  resize to S when h * 2^upsamplings != S, a 3x3 conv and a sigmoid."""
  width: int
  upsamplings: int

  @nn.compact
  def __call__(self, x, out_size: int, channels: int, train: bool = False):
    width = self.width
    for i in range(self.upsamplings):
      b, h, w, c = x.shape
      x = jax.image.resize(x, (b, 2 * h, 2 * w, c), 'nearest')
      x = nn.Conv(width, (3, 3), use_bias=False, name=f'conv{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f'bn{i}')(x)
      x = nn.relu(x)
      width = max(width // 2, 8)
    if x.shape[1] != out_size or x.shape[2] != out_size:
      x = jax.image.resize(x, (x.shape[0], out_size, out_size, x.shape[-1]), 'bilinear')
    return nn.sigmoid(nn.Conv(channels, (3, 3), name='out')(x).astype(jnp.float32))


class ContextEncoder(nn.Module):
  """Encoder + `Decoder`; parameter subtrees 'encoder' and 'decoder'."""
  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x, train: bool = False):
    """Whole images -> {'features': pooled encoder features [B, C]}; at init also creates
    the decoder's parameters."""
    if self.is_initializing():
      return self.reconstruct(x, train)
    return {'features': self.encoder(x, train=train)}

  def reconstruct(self, x, train: bool = False):
    """Images [B, S, S, C] -> {'features' [B, C], 'reconstruction' [B, S, S, C]}."""
    fmap = self.encoder.feature_map(x, train)
    return {'features': self.encoder.pool(fmap),
            'reconstruction': self.decoder(fmap, x.shape[1], x.shape[-1], train)}


def encoder_stride(encoder) -> int:
  """How many times the encoder's last map is smaller than its input (32 for the ResNets'
  'imagenet' stem, 8 for the 'small' one), from shapes only (nothing is computed)."""
  size = 256
  x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
  out = jax.eval_shape(lambda x: encoder.init_with_output(
      jax.random.PRNGKey(0), x, False, method=encoder.feature_map)[0], x)
  return size // out.shape[1]


def build_model(encoder, cfg):
  upsamplings = int(round(math.log2(encoder_stride(encoder))))
  return ContextEncoder(encoder=encoder, decoder=Decoder(cfg.decoder_width, upsamplings))


init_extra = common.no_extra
update_extra = common.keep_extra


def make_inputs(rng, images, hp, image_size: int, cfg):
  """{'images': masked views [B, S, S, C], 'targets': the views, 'mask': [B, S, S, 1]
  1.0 inside the square}."""
  k_view, k_place = jax.random.split(rng)
  views = augment.augment(k_view, images, hp['strength'], image_size)
  batch, side = views.shape[0], mask_side(cfg, image_size)
  if cfg.position == 'center':
    corner = jnp.full((batch, 2), (image_size - side) // 2, jnp.int32)
  else:
    corner = jax.random.randint(k_place, (batch, 2), 0, image_size - side + 1, jnp.int32)
  rows = jnp.arange(image_size)
  inside = lambda c: (rows >= c[:, None]) & (rows < c[:, None] + side)  # [B, S]
  mask = (inside(corner[:, 0])[:, :, None] & inside(corner[:, 1])[:, None, :])
  mask = mask[..., None].astype(jnp.float32)
  fill = jnp.mean(views, axis=(1, 2, 3), keepdims=True)
  return {'images': views * (1.0 - mask) + fill * mask, 'targets': views, 'mask': mask}


def reconstruction_loss(reconstruction, targets, mask, outside_weight: float):
  """Mean squared error over the masked pixels (and channels) + outside_weight x the mean
  squared error over the other pixels; the pixels of the whole batch weigh alike."""
  err = (reconstruction.astype(jnp.float32) - targets) ** 2
  channels = targets.shape[-1]
  inside = jnp.sum(err * mask) / (jnp.sum(mask) * channels)
  outside = jnp.sum(err * (1.0 - mask)) / jnp.maximum(jnp.sum(1.0 - mask) * channels, 1.0)
  return inside + outside_weight * outside, inside


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  """The reconstruction loss; metrics loss and masked_mse; aux['features'] of the masked
  views."""
  del extra, hp
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, inputs['images'],
                             train=True, mutable=['batch_stats'],
                             method=ContextEncoder.reconstruct)
  loss, masked = reconstruction_loss(out['reconstruction'], inputs['targets'], inputs['mask'],
                                     cfg.outside_weight)
  return loss, (updates['batch_stats'], {'loss': loss, 'masked_mse': masked},
                {'features': out['features']})
