"""ResNet-18/34/50 (v1.5) encoders for chest radiographs, in flax.linen.

The models are pure functions of (params, batch_stats, inputs): call
`model.apply({'params': p, 'batch_stats': s}, x, train=True,
mutable=['batch_stats'])` in training and without `mutable` in evaluation.

Layout choices, all made so that torchvision weights map one to one onto the
parameter tree (a converter imports them later):
  * v1.5: in bottleneck blocks the stride sits on the 3x3 convolution.
  * Explicit torch-style padding (1 for 3x3, 3 for the 7x7 stem, 1 for the
    stem max-pool) instead of 'SAME', which pads asymmetrically at stride 2
    and would shift every feature map by half a pixel against torchvision.
  * Names: 'conv_init'/'bn_init' (torch conv1/bn1), 'stage{i}_block{j}'
    (torch layer{i}.{j}) holding 'conv1', 'bn1', ..., 'proj_conv'/'proj_bn'
    (torch downsample.0/.1), and 'head' (torch fc).

BatchNorm uses momentum 0.9 and epsilon 1e-5 (torch momentum 0.1), and the last
BN scale of every residual block starts at zero, so each block starts as the
identity on its residual branch (Goyal et al., 2017). Under `jax.jit` with a
batch-sharded global array, the batch mean inside BatchNorm is already taken
over the global batch, so no `axis_name` is needed; it is passed through for
`shard_map`/`pmap` users.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxr_jax.models.layers import batch_norm
from cxr_jax.models.layers import Conv3x3
from cxr_jax.models.layers import conv_kernel_init
from cxr_jax.models.layers import Encoder
from cxr_jax.models.layers import scaled
from cxr_jax.models.layers import stem_max_pool

Dtype = Any

def _conv1x1(features: int, strides: int, dtype: Dtype, name: str):
  return nn.Conv(features, (1, 1), strides=(strides, strides), padding='VALID',
                 use_bias=False, dtype=dtype, kernel_init=conv_kernel_init,
                 name=name)


class _Block(nn.Module):
  """Fields shared by the two residual blocks (see `BasicBlock`, `BottleneckBlock`)."""
  features: int
  strides: int = 1
  small_map_conv: bool = True
  dtype: Dtype = jnp.float32
  axis_name: str | None = None
  dot_batch_norm: bool | None = None

  def _norm(self, train: bool):
    return functools.partial(batch_norm, train, self.dtype, self.axis_name,
                             dot_batch_norm=self.dot_batch_norm)


class BasicBlock(_Block):
  """ResNet-18/34 block: two 3x3 convs; [B, H, W, Cin] -> [B, H/s, W/s, F].

  Attributes:
    features: output channels F.
    strides: stride s of the first 3x3 convolution (and the projection).
    small_map_conv, dtype, axis_name, dot_batch_norm: as in `ResNet`.
  """
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = self._norm(train)
    residual = x
    y = Conv3x3(self.features, self.strides, self.small_map_conv, self.dtype,
                name='conv1')(x)
    y = nn.relu(bn(name='bn1')(y))
    y = Conv3x3(self.features, 1, self.small_map_conv, self.dtype,
                name='conv2')(y)
    y = bn(zero_scale=True, name='bn2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = _conv1x1(self.features, self.strides, self.dtype,
                          'proj_conv')(x)
      residual = bn(name='proj_bn')(residual)
    return nn.relu(residual + y)


class BottleneckBlock(_Block):
  """ResNet-50 block (v1.5): 1x1, 3x3 (strided), 1x1 x4 expansion.

  [B, H, W, Cin] -> [B, H/s, W/s, 4F].

  Attributes:
    features: bottleneck channels F (the block outputs 4F).
    strides: stride s of the 3x3 convolution (and the projection).
    small_map_conv, dtype, axis_name, dot_batch_norm: as in `ResNet`.
  """
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = self._norm(train)
    out_features = self.features * self.expansion
    residual = x
    y = _conv1x1(self.features, 1, self.dtype, 'conv1')(x)
    y = nn.relu(bn(name='bn1')(y))
    y = Conv3x3(self.features, self.strides, self.small_map_conv, self.dtype,
                name='conv2')(y)
    y = nn.relu(bn(name='bn2')(y))
    y = _conv1x1(out_features, 1, self.dtype, 'conv3')(y)
    y = bn(zero_scale=True, name='bn3')(y)
    if self.strides != 1 or x.shape[-1] != out_features:
      residual = _conv1x1(out_features, self.strides, self.dtype,
                          'proj_conv')(x)
      residual = bn(name='proj_bn')(residual)
    return nn.relu(residual + y)


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


class ResNet(Encoder):
  """ResNet v1.5 encoder with an optional linear head.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block_cls: 'basic' | 'bottleneck', or a block class with the interface of
      `BasicBlock` (attribute `expansion`).
    width: multiplier on the base 64 channels (stage i has 64 * 2^i * width
      bottleneck channels, rounded, at least 1).
    num_classes: if None, `__call__` returns pooled features [B, C]; else
      logits [B, num_classes] from a Dense layer named 'head'.
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool: /4 before stage 1) or
      'small' (3x3/1 conv, no pool: for 32-64 px inputs).
    dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    small_map_conv: use the one-dot form for 3x3 stride-1 convolutions on
      maps smaller than 3x3 (a large CPU speed-up; numerically the same).
    axis_name: BatchNorm's cross-device axis for shard_map/pmap; leave None
      under jit with global arrays (the batch mean is already global).
    dot_batch_norm: BatchNorm's batch sums as dots (`batch_norm.DotBatchNorm`:
      the same numbers; XLA's CPU reductions are slow). None = on for the CPU
      backend only. Ignored (flax's BatchNorm) when axis_name is set.
    remat: rematerialise each residual block in the backward pass (nn.remat):
      only block inputs are kept between forward and backward, trading about
      one more forward pass for activation memory (large resolutions or
      batches). Same parameters and, up to float rounding, the same outputs
      and gradients.
  """
  stage_sizes: Sequence[int]
  block_cls: Any = 'basic'
  width: float = 1.0
  num_classes: int | None = None
  stem: str = 'imagenet'
  dtype: Dtype = jnp.float32
  small_map_conv: bool = True
  axis_name: str | None = None
  remat: bool = False
  dot_batch_norm: bool | None = None
  _family = 'ResNet'

  def _block(self):
    block = self.block_cls
    if isinstance(block, str):
      if block not in BLOCKS:
        raise ValueError(f'Unknown ResNet block {block!r}; valid blocks: '
                         f'{sorted(BLOCKS)}.')
      block = BLOCKS[block]
    return block

  @property
  def num_features(self) -> int:
    """Channels C of the last stage's map and of the pooled features."""
    return (scaled(64 * 2**(len(self.stage_sizes) - 1), self.width) *
            self._block().expansion)

  @nn.compact
  def feature_map(self, x: jax.Array, train: bool = False, first_stage: int = 1,
                  last_stage: int | None = None) -> jax.Array:
    """The map after stage `last_stage` (default: the last; what Grad-CAM looks at).

    Args:
      x: images [B, H, W, Cin] (Cin = 1 for radiographs); with first_stage > 1, the
        map after stage first_stage - 1 instead (the stem is then skipped), so that
        `feature_map(feature_map(x, last_stage=k), first_stage=k + 1)` is the whole
        network with the same parameters.
      train: batch statistics (and their running update) if True, running
        averages otherwise.
      first_stage, last_stage: 1-based stages to run (inclusive).

    Returns:
      [B, h, w, C] in `dtype`; after the last stage h = H/32 with the imagenet stem,
      H/8 with the small stem (for 4 stages); each earlier stage doubles h.
    """
    last_stage = self._check(first_stage, last_stage)
    block = self._block()
    if self.remat:
      # `train` (argument 2, counting self) switches code paths: keep it static.
      block = nn.remat(block, static_argnums=(2,))
    x = x.astype(self.dtype)
    if first_stage == 1:
      x = self._stem(x, train)
    for i, num_blocks in enumerate(self.stage_sizes[:last_stage]):
      if i + 1 < first_stage:
        continue
      for j in range(num_blocks):
        x = block(
            features=scaled(64 * 2**i, self.width),
            strides=2 if i > 0 and j == 0 else 1,
            small_map_conv=self.small_map_conv,
            dtype=self.dtype,
            axis_name=self.axis_name,
            dot_batch_norm=self.dot_batch_norm,
            name=f'stage{i + 1}_block{j}')(x, train)
    return x

  def _stem(self, x: jax.Array, train: bool) -> jax.Array:
    stem_features = scaled(64, self.width)
    if self.stem == 'imagenet':
      x = nn.Conv(stem_features, (7, 7), strides=(2, 2),
                  padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                  kernel_init=conv_kernel_init, name='conv_init')(x)
    else:
      x = Conv3x3(stem_features, 1, self.small_map_conv, self.dtype,
                  name='conv_init')(x)
    x = batch_norm(train, self.dtype, self.axis_name, name='bn_init',
                    dot_batch_norm=self.dot_batch_norm)(x)
    x = nn.relu(x)
    if self.stem == 'imagenet':
      # Pads with -inf (reduce_window's init value), as torch's MaxPool2d.
      x = stem_max_pool(x)
    return x

def resnet18(**kw) -> ResNet:
  """ResNet-18: basic blocks (2, 2, 2, 2); 512 * width features."""
  return ResNet(stage_sizes=(2, 2, 2, 2), block_cls='basic', **kw)


def resnet34(**kw) -> ResNet:
  """ResNet-34: basic blocks (3, 4, 6, 3); 512 * width features."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls='basic', **kw)


def resnet50(**kw) -> ResNet:
  """ResNet-50: bottleneck blocks (3, 4, 6, 3); 2048 * width features."""
  return ResNet(stage_sizes=(3, 4, 6, 3), block_cls='bottleneck', **kw)
