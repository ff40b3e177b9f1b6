"""Building blocks the backbones share (ResNet, DenseNet): the BatchNorm helper, the 3x3
convolution with its CPU small-map fast path, the stem's max-pool (with a hand-written
gradient, and an ONNX-friendly form chosen at trace time), the width multiplier and the
`Encoder` base class (head, checks, pooling).

BatchNorm uses momentum 0.9 and epsilon 1e-5 (torch momentum 0.1). Under `jax.jit` with a
batch-sharded global array, the batch mean inside BatchNorm is already taken over the
global batch, so no `axis_name` is needed; it is passed through for `shard_map`/`pmap`
users.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cxr_jax.models.batch_norm import DotBatchNorm

Dtype = Any

# torchvision's ResNet init for convolutions: kaiming_normal_(mode='fan_out',
# nonlinearity='relu'); the default of `Conv3x3`.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

STEMS = ('imagenet', 'small')

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None,
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


def max_pool_by_slices(x: jax.Array) -> jax.Array:
  """The stem's 3x3 stride-2 max-pool (-inf padding 1) as the max of its 9 strided taps:
  the same values as `max_pool_3x3_s2`, whose lax.reduce_window jax2onnx turns into a 4-D
  ONNX MaxPool over (B, H, W, C) that onnxruntime refuses ("Unsupported pooling size")."""
  b, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taps = [lax.slice(xp, (0, i, j, 0), (b, i + 2 * (ho - 1) + 1, j + 2 * (wo - 1) + 1, c),
                    (1, 2, 2, 1)) for i in range(3) for j in range(3)]
  out = taps[0]
  for t in taps[1:]:
    out = jnp.maximum(out, t)
  return out


# The stem pool every backbone calls (`stem_max_pool`), read at call (trace) time so that
# `pool_by_slices()` reaches ResNet and DenseNet alike.
_STEM_POOL = {'fn': max_pool_3x3_s2}


def stem_max_pool(x: jax.Array) -> jax.Array:
  """The stems' 3x3 stride-2 max-pool: `max_pool_3x3_s2`, or `max_pool_by_slices` inside
  `pool_by_slices()`."""
  return _STEM_POOL['fn'](x)


@contextlib.contextmanager
def pool_by_slices():
  """While tracing for ONNX export: every stem's max-pool as `max_pool_by_slices`."""
  previous = _STEM_POOL['fn']
  _STEM_POOL['fn'] = max_pool_by_slices
  try:
    yield
  finally:
    _STEM_POOL['fn'] = previous



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


def scaled(channels: int, width: float) -> int:
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
