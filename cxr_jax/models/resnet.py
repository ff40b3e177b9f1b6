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
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cxr_jax.models.batch_norm import DotBatchNorm

Dtype = Any

# torchvision's init for convolutions: kaiming_normal_(mode='fan_out',
# nonlinearity='relu').
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _batch_norm(train: bool, dtype: Dtype, axis_name: str | None,
                zero_scale: bool = False, name: str | None = None,
                dot_batch_norm: bool | None = None):
  """BatchNorm with the ResNet settings; zero_scale for a block's last BN.

  dot_batch_norm: batch sums as dots (`batch_norm.DotBatchNorm`, the same numbers);
  None = on for the CPU backend, where XLA's own reductions are slow, off elsewhere.
  """
  if dot_batch_norm is None:
    dot_batch_norm = jax.default_backend() == 'cpu'
  kw = dict(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON,
            dtype=dtype,
            scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
            name=name)
  if dot_batch_norm and axis_name is None:
    return DotBatchNorm(**kw)
  return nn.BatchNorm(axis_name=axis_name, **kw)


def conv3x3_small_map(x: jax.Array, kernel: jax.Array, strides: int = 1) -> jax.Array:
  """A 3x3 convolution with torch padding 1 (stride 1 or 2) written as one dot.

  XLA's CPU backend turns 3x3 convolutions over maps smaller than 3x3 into a
  very slow swapped-operand form, and the input gradient of a stride-2 one with a
  2x2 output into a slow lhs-dilated convolution (~300 ms of a 64 px ResNet-18 step,
  docs/benchmarks.md). On such maps we gather the strided, shifted slices of the
  zero-padded input for the taps that can touch a real pixel, concatenate them on
  channels, and contract once with the matching rows of the kernel: the same
  result, as a plain matrix product (whose gradients are slices, pads and dots).

  Args:
    x: input [B, H, W, Cin]; any size is correct, but the patches grow with the
      map, so use it only where the output is small.
    kernel: [3, 3, Cin, Cout], laid out as flax's nn.Conv kernel.
    strides: 1 or 2 on both spatial axes.

  Returns:
    [B, H', W', Cout] with H' = (H - 1) // strides + 1.
  """
  b, h, w, cin = x.shape
  s = strides
  ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # Tap d reads padded rows d, d+s, ..., d+s(ho-1), i.e. input rows d-1+s*i; it
  # touches the map unless all of those lie in the padding (rows -1 or h).
  def live(d, size, out):
    return any(0 <= d - 1 + s * i < size for i in range(out))
  taps = [(di, dj) for di in range(3) if live(di, h, ho)
          for dj in range(3) if live(dj, w, wo)]
  patches = jnp.concatenate(
      [lax.slice(xp, (0, di, dj, 0), (b, di + s * (ho - 1) + 1, dj + s * (wo - 1) + 1, cin),
                 (1, s, s, 1)) for di, dj in taps], axis=-1)
  k = jnp.concatenate([kernel[di, dj] for di, dj in taps], axis=0)
  # [B, H', W', T * Cin] x [T * Cin, Cout]: the patch channel order matches the
  # kernel row order (tap-major, then input channel).
  return lax.dot_general(patches, k, (((3,), (0,)), ((), ())))


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """The ResNet stem's 3x3 stride-2 max-pool (padding 1 with -inf, as torch's).

  The same forward as `nn.max_pool`; its gradient is written out because XLA's CPU
  backend computes the pool's gradient through a reduce-window that carries four
  full-size int32 index arrays (~170 ms of a 64 px ResNet-18 step, docs/benchmarks.md).
  Here each of the 9 taps passes the gradient to the input it read when that input is
  the window's maximum and no earlier tap (row-major) was: the first maximum gets it,
  as in XLA's select-and-scatter and torch.
  """
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, 3, 3, 1),
                           (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


def _max_pool_fwd(x):
  y = max_pool_3x3_s2(x)
  return y, (x, y)


def _max_pool_bwd(res, dy):
  x, y = res
  b, h, w, c = x.shape
  ho, wo = y.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  zero = jnp.zeros((), dy.dtype)
  taken = jnp.zeros(y.shape, bool)
  g = {}  # tap (di, dj) -> the gradient it passes on, at output resolution
  for di in range(3):
    for dj in range(3):
      tap = lax.slice(xp, (0, di, dj, 0),
                      (b, di + 2 * (ho - 1) + 1, dj + 2 * (wo - 1) + 1, c), (1, 2, 2, 1))
      hit = (tap == y) & ~taken
      taken = taken | hit
      g[di, dj] = jnp.where(hit, dy, zero)
  # Tap d of output i read padded index 2i + d: even indices 2m get taps (d=0, i=m) and
  # (d=2, i=m-1), odd ones 2m+1 get (d=1, i=m). Sum per parity class at half resolution,
  # then interleave the four classes once.
  rows, cols = -(-(h + 2) // 2), -(-(w + 2) // 2)
  by_parity = {0: ((0, 0), (2, 1)), 1: ((1, 0),)}  # parity -> ((tap, shift), ...)
  classes = []
  for a in (0, 1):
    for bb in (0, 1):
      total = jnp.zeros((b, rows, cols, c), dy.dtype)
      for di, si in by_parity[a]:
        for dj, sj in by_parity[bb]:
          total = total + lax.pad(g[di, dj], zero, (
              (0, 0, 0), (si, rows - ho - si, 0), (sj, cols - wo - sj, 0), (0, 0, 0)))
      classes.append(total)
  dxp = jnp.stack(classes, axis=0).reshape(2, 2, b, rows, cols, c)
  dxp = dxp.transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * rows, 2 * cols, c)
  return (dxp[:, 1:h + 1, 1:w + 1, :],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


class Conv3x3(nn.Module):
  """3x3 convolution, no bias, torch padding 1, with the small-map fast path.

  Holds one parameter 'kernel' [3, 3, Cin, Cout], exactly as
  `nn.Conv(features, (3, 3), use_bias=False)` would, so parameter trees do
  not depend on `small_map_conv`.

  Attributes:
    features: output channels.
    strides: 1 or 2 (both spatial axes).
    small_map_conv: when True, a convolution whose output map is smaller than
      3x3 in both axes (static shape, checked at trace time) is computed by
      `conv3x3_small_map` instead of `lax.conv_general_dilated`.
    dtype: compute dtype; the kernel is stored in float32.
  """
  features: int
  strides: int = 1
  small_map_conv: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = conv_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Applies the convolution: [B, H, W, Cin] -> [B, H', W', features]."""
    kernel = self.param('kernel', self.kernel_init,
                        (3, 3, x.shape[-1], self.features), jnp.float32)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    out_h, out_w = ((n - 1) // self.strides + 1 for n in x.shape[1:3])
    if self.small_map_conv and out_h < 3 and out_w < 3:
      return conv3x3_small_map(x, kernel, self.strides)
    return lax.conv_general_dilated(
        x, kernel,
        window_strides=(self.strides, self.strides),
        padding=((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


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
    return functools.partial(_batch_norm, train, self.dtype, self.axis_name,
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
STEMS = ('imagenet', 'small')


def _scaled(channels: int, width: float) -> int:
  """Channels after the width multiplier: rounded, at least 1."""
  return max(1, int(round(channels * width)))


class Encoder(nn.Module):
  """What the backbones share: the optional head, the stage-range and option checks,
  global average pooling, and `__call__` = feature_map -> pool -> head. A subclass
  declares its fields (including `num_classes`, `stem`, `width`, `dtype`) and its
  compact `feature_map`."""
  _family = 'Encoder'

  def setup(self):
    # Only the head lives here; the body is built in the compact
    # `feature_map`, so `__call__` can compose feature_map -> pool -> head.
    if self.num_classes is not None:
      self.head = nn.Dense(self.num_classes, dtype=self.dtype)

  def _check(self, first_stage: int, last_stage: int | None) -> int:
    """`last_stage` resolved (None -> the last), after checking the stage range, stem and
    width."""
    num_stages = len(self.stage_sizes)
    last_stage = num_stages if last_stage is None else last_stage
    if not 1 <= first_stage <= last_stage <= num_stages:
      raise ValueError(f'{self._family} stages run from 1 to {num_stages}; got first_stage='
                       f'{first_stage}, last_stage={last_stage}')
    if self.stem not in STEMS:
      raise ValueError(f'Unknown {self._family} stem {self.stem!r}; valid stems: '
                       f'{list(STEMS)}.')
    if self.width <= 0:
      raise ValueError(f'{self._family} width must be > 0, got {self.width}.')
    return last_stage

  def pool(self, fmap: jax.Array) -> jax.Array:
    """Global average pool: [B, h, w, C] -> [B, C]."""
    return jnp.mean(fmap, axis=(1, 2))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Images [B, H, W, Cin] -> features [B, C], or logits [B, num_classes]."""
    features = self.pool(self.feature_map(x, train))
    if self.num_classes is None:
      return features
    return self.head(features)


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
    return (_scaled(64 * 2**(len(self.stage_sizes) - 1), self.width) *
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
            features=_scaled(64 * 2**i, self.width),
            strides=2 if i > 0 and j == 0 else 1,
            small_map_conv=self.small_map_conv,
            dtype=self.dtype,
            axis_name=self.axis_name,
            dot_batch_norm=self.dot_batch_norm,
            name=f'stage{i + 1}_block{j}')(x, train)
    return x

  def _stem(self, x: jax.Array, train: bool) -> jax.Array:
    stem_features = _scaled(64, self.width)
    if self.stem == 'imagenet':
      x = nn.Conv(stem_features, (7, 7), strides=(2, 2),
                  padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                  kernel_init=conv_kernel_init, name='conv_init')(x)
    else:
      x = Conv3x3(stem_features, 1, self.small_map_conv, self.dtype,
                  name='conv_init')(x)
    x = _batch_norm(train, self.dtype, self.axis_name, name='bn_init',
                    dot_batch_norm=self.dot_batch_norm)(x)
    x = nn.relu(x)
    if self.stem == 'imagenet':
      # Pads with -inf (reduce_window's init value), as torch's MaxPool2d.
      x = max_pool_3x3_s2(x)
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


def densenet121(**kw) -> nn.Module:
  """DenseNet-121 (`cxr_jax.models.densenet`; imported here lazily, as it builds on this
  module's helpers)."""
  from cxr_jax.models import densenet
  return densenet.densenet121(**kw)


def densenet169(**kw) -> nn.Module:
  """DenseNet-169 (`cxr_jax.models.densenet`)."""
  from cxr_jax.models import densenet
  return densenet.densenet169(**kw)


ENCODERS = {'resnet18': resnet18, 'resnet34': resnet34, 'resnet50': resnet50,
            'densenet121': densenet121, 'densenet169': densenet169}


def build_encoder(name: str, **kw) -> nn.Module:
  """Builds an encoder by name ('resnet18' | 'resnet34' | 'resnet50' | 'densenet121' |
  'densenet169').

  Args:
    name: the encoder's name.
    **kw: `ResNet` / `DenseNet` attributes (width, num_classes, stem, dtype, remat, ...).

  Raises:
    ValueError: if `name` is not a known encoder.
  """
  if name not in ENCODERS:
    raise ValueError(f'Unknown encoder {name!r}; valid encoders: '
                     f'{sorted(ENCODERS)}.')
  return ENCODERS[name](**kw)
