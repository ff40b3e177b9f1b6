"""DenseNet-BC 121/169 encoders (Huang et al., CVPR 2017), laid out as torchvision's.

A drop-in alternative to `cxr_jax.models.resnet.ResNet` (the same interface: `__call__`,
`feature_map(x, train, first_stage, last_stage)`, `pool`, `stage_sizes`, `num_features`,
`num_classes`, `dtype`), so that pretraining, fine-tuning, probes and Grad-CAM take either.

Architecture (torchvision.models.densenet121/169): growth rate k = 32, bottleneck width
bn_size * k = 4k, compression 0.5, 64 initial features; stem 7x7/2 conv + BN + ReLU + 3x3/2
max-pool (torch padding); dense blocks of (6, 12, 24, 16) (121) or (6, 12, 32, 32) (169)
layers, each layer BN-ReLU-1x1 conv (4k) - BN-ReLU-3x3 conv (k), its output concatenated
to its input; between blocks a transition BN-ReLU-1x1 conv (halving channels)-2x2/2
average pool; after the last block BN + ReLU, then global average pooling.

Stages, as the ResNet's (what `feature_map`'s `first_stage`/`last_stage` and Grad-CAM's
`stage=` count): stage 1 is the stem and dense block 1; stage i > 1 is transition i-1 and
dense block i; the last stage also applies the final norm and ReLU. So the map after the
last stage (Grad-CAM's default) is the last dense block's output after the final
BN + ReLU, exactly what torchvision pools; an earlier stage's map is that dense block's
concatenated output (before its transition), at twice the resolution per stage.

Names map one to one onto torchvision/timm state dicts (see `cxr_jax/models/densenet_convert.py`):
'conv0', 'norm0', 'denseblock{i}_denselayer{j}' (features.denseblock{i}.denselayer{j})
holding 'norm1', 'conv1', 'norm2', 'conv2', 'transition{i}' holding 'norm', 'conv',
'norm5', and 'head' (classifier).

BatchNorm is the shared helper (`layers.batch_norm`: momentum 0.9, epsilon 1e-5, the
dot-sum fast path on CPU, flax's BatchNorm with `axis_name` for shard_map/pmap), so batch
statistics are global under jit with batch-sharded arrays, as for the ResNet.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models.layers import batch_norm
from cxr_jax.models.layers import Conv3x3
from cxr_jax.models.layers import Encoder
from cxr_jax.models.layers import scaled
from cxr_jax.models.layers import stem_max_pool

Dtype = Any

# torchvision's DenseNet init for convolutions: kaiming_normal_ (mode='fan_in').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')



def _conv1x1(features: int, dtype: Dtype, name: str):
  return nn.Conv(features, (1, 1), padding='VALID', use_bias=False, dtype=dtype,
                 kernel_init=conv_kernel_init, name=name)


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bottleneck) - BN-ReLU-3x3 conv; [B, H, W, C] -> [B, H, W, C + k].

  Attributes:
    growth_rate: k, the channels the layer adds.
    bn_size: the bottleneck has bn_size * k channels.
    small_map_conv, dtype, axis_name, dot_batch_norm: as in `DenseNet`.
  """
  growth_rate: int
  bn_size: int = 4
  small_map_conv: bool = True
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  dot_batch_norm: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = functools.partial(batch_norm, train, self.dtype, self.axis_name,
                           dot_batch_norm=self.dot_batch_norm)
    y = nn.relu(bn(name='norm1')(x))
    y = _conv1x1(self.bn_size * self.growth_rate, self.dtype, 'conv1')(y)
    y = nn.relu(bn(name='norm2')(y))
    y = Conv3x3(self.growth_rate, 1, self.small_map_conv, self.dtype,
                kernel_init=conv_kernel_init, name='conv2')(y)
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv-2x2/2 average pool; [B, H, W, C] -> [B, H/2, W/2, features]."""
  features: int
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  dot_batch_norm: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.relu(batch_norm(train, self.dtype, self.axis_name, name='norm',
                            dot_batch_norm=self.dot_batch_norm)(x))
    x = _conv1x1(self.features, self.dtype, 'conv')(x)
    # torch's AvgPool2d(2, 2): no padding, odd sizes floor
    # (window_shape by keyword: jax2onnx's export of nn.avg_pool takes it so)
    return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding='VALID')


class DenseNet(Encoder):
  """DenseNet-BC encoder with an optional linear head (interface of `ResNet`).

  Attributes:
    stage_sizes: dense layers per block, e.g. (6, 12, 24, 16) for DenseNet-121.
    growth_rate: k at width 1 (32).
    num_init_features: stem channels at width 1 (64).
    bn_size: bottleneck multiplier (4).
    compression: channel factor of the transitions (0.5).
    width: multiplier on growth_rate and num_init_features (rounded, at least 1), so
      tests can build tiny models (width=0.125: k = 4, 8 stem channels).
    num_classes: if None, `__call__` returns pooled features [B, C]; else logits
      [B, num_classes] from a Dense layer named 'head' (torch 'classifier').
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool: /4 before block 1) or 'small'
      (3x3/1 conv, no pool: for 32-64 px inputs; no torchvision counterpart).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    small_map_conv: the one-dot form of 3x3 convolutions on maps smaller than 3x3.
    axis_name: BatchNorm's cross-device axis for shard_map/pmap (None under jit).
    remat: rematerialise each dense layer in the backward pass (nn.remat).
    dot_batch_norm: as in `ResNet` (None = on for the CPU backend).
  """
  stage_sizes: Sequence[int]
  growth_rate: int = 32
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  width: float = 1.0
  num_classes: int | None = None
  stem: str = 'imagenet'
  dtype: Dtype = jnp.float32
  small_map_conv: bool = True
  axis_name: str | None = None
  remat: bool = False
  dot_batch_norm: bool | None = None
  _family = 'DenseNet'

  def _channels(self) -> list[tuple[int, int]]:
    """(input channels, output channels) of every dense block."""
    k = scaled(self.growth_rate, self.width)
    c = scaled(self.num_init_features, self.width)
    out = []
    for i, n in enumerate(self.stage_sizes):
      out.append((c, c + n * k))
      c += n * k
      if i + 1 < len(self.stage_sizes):
        c = int(c * self.compression)
    return out

  @property
  def num_features(self) -> int:
    """Channels C of the last block's map and of the pooled features."""
    return self._channels()[-1][1]

  def _norm(self, train: bool, name: str):
    return batch_norm(train, self.dtype, self.axis_name, name=name,
                       dot_batch_norm=self.dot_batch_norm)

  @nn.compact
  def feature_map(self, x: jax.Array, train: bool = False, first_stage: int = 1,
                  last_stage: int | None = None) -> jax.Array:
    """The map after stage `last_stage` (default: the last; what Grad-CAM looks at).

    Args:
      x: images [B, H, W, Cin]; with first_stage > 1, the map after stage
        first_stage - 1 instead (see the module docstring for the stages), so that
        `feature_map(feature_map(x, last_stage=k), first_stage=k + 1)` is the whole
        network with the same parameters.
      train: batch statistics (and their running update) if True, running averages
        otherwise.
      first_stage, last_stage: 1-based stages to run (inclusive).

    Returns:
      [B, h, w, C] in `dtype`; after the last stage (ReLU of the final norm) h = H/32
      with the imagenet stem, H/8 with the small stem (4 blocks); each earlier stage
      doubles h.
    """
    num_stages = len(self.stage_sizes)
    last_stage = self._check(first_stage, last_stage)
    layer = DenseLayer
    if self.remat:
      layer = nn.remat(layer, static_argnums=(2,))
    k = scaled(self.growth_rate, self.width)
    channels = self._channels()
    x = x.astype(self.dtype)
    if first_stage == 1:
      x = self._stem(x, train)
    for i in range(first_stage - 1, last_stage):
      if i > 0:
        x = Transition(channels[i][0], self.dtype, self.axis_name, self.dot_batch_norm,
                       name=f'transition{i}')(x, train)
      for j in range(self.stage_sizes[i]):
        x = layer(growth_rate=k, bn_size=self.bn_size, small_map_conv=self.small_map_conv,
                  dtype=self.dtype, axis_name=self.axis_name,
                  dot_batch_norm=self.dot_batch_norm,
                  name=f'denseblock{i + 1}_denselayer{j + 1}')(x, train)
    if last_stage == num_stages:
      x = nn.relu(self._norm(train, f'norm{num_stages + 1}')(x))
    return x

  def _stem(self, x: jax.Array, train: bool) -> jax.Array:
    features = scaled(self.num_init_features, self.width)
    if self.stem == 'imagenet':
      x = nn.Conv(features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                  use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init,
                  name='conv0')(x)
    else:
      x = Conv3x3(features, 1, self.small_map_conv, self.dtype,
                  kernel_init=conv_kernel_init, name='conv0')(x)
    x = nn.relu(self._norm(train, 'norm0')(x))
    if self.stem == 'imagenet':
      x = stem_max_pool(x)
    return x


def densenet121(**kw) -> DenseNet:
  """DenseNet-121: blocks (6, 12, 24, 16), k = 32; 1024 * width features (about)."""
  return DenseNet(stage_sizes=(6, 12, 24, 16), **kw)


def densenet169(**kw) -> DenseNet:
  """DenseNet-169: blocks (6, 12, 32, 32), k = 32; 1664 * width features (about)."""
  return DenseNet(stage_sizes=(6, 12, 32, 32), **kw)
