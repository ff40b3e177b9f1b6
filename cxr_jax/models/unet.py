"""A small U-Net (Ronneberger et al., MICCAI 2015) for lung segmentation.

Encoder: per level two (3x3 conv -> BatchNorm -> ReLU), then 2x2 max-pool; a bottleneck of
the same block; decoder: 2x2 transposed convolution up, concatenation with the encoder's
map of that level (the skip connection), two conv blocks. A 1x1 convolution gives one
logit per pixel (lung vs not). `features` sets the channels per level, e.g. (16, 32, 64,
128): three poolings, so the input side must be divisible by 2 ** (len(features) - 1).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_BN_MOMENTUM = 0.9


class _Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=False, name=f'conv{i}')(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                       name=f'bn{i}')(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """Images [B, H, W, C] in [0, 1] -> lung logits [B, H, W].

  Attributes:
    features: channels per level, shallowest first; the last is the bottleneck.
  """
  features: Sequence[int] = (16, 32, 64, 128)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    levels = len(self.features) - 1
    if x.shape[1] % 2 ** levels or x.shape[2] % 2 ** levels:
      raise ValueError(f'UNet with {levels} poolings needs H and W divisible by '
                       f'{2 ** levels}, got {x.shape[1:3]}')
    skips = []
    for i, f in enumerate(self.features[:-1]):
      x = _Block(f, name=f'down{i}')(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = _Block(self.features[-1], name='bottleneck')(x, train)
    for i in reversed(range(levels)):
      f = self.features[i]
      x = nn.ConvTranspose(f, (2, 2), strides=(2, 2), name=f'up{i}')(x)
      x = _Block(f, name=f'dec{i}')(jnp.concatenate([x, skips[i]], axis=-1), train)
    return nn.Conv(1, (1, 1), name='logits')(x)[..., 0].astype(jnp.float32)
