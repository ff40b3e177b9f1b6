"""BatchNorm whose batch sums are matrix-vector products (a CPU fast path).

Why: XLA's CPU backend rewrites every large reduction (the mean and mean square of a
[B, H, W, C] activation, and the sums over the batch in BatchNorm's backward pass) into a
tree of `reduce-window` ops whose CPU emitter runs ~20x below memory speed. In a
ResNet-18 SimCLR step at 128 px on the 2-core dev machine those reduce-windows took 3.7 s
of an 8 s step (jax.profiler trace, docs/benchmarks.md). A sum over rows written as
`ones[N] @ x[N, C]` is a dot, which XLA hands to Eigen's GEMV at memory speed. The
backward pass is written out (custom VJP) so that its sums are dots too.

Numerically this is flax.linen.BatchNorm (use_fast_variance=True, float32 statistics):
same parameters ('scale', 'bias'), the same batch_stats ('mean', 'var', biased variance),
the same running-average update, and outputs and gradients equal to float rounding
(tests/models/test_fast_paths.py). Only `axis_name=None` (jit with global arrays) is
supported: the ResNet falls back to flax's BatchNorm for shard_map/pmap users.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def _row_sum(m: jax.Array) -> jax.Array:
  """[N, C] -> [C]: the sum over rows as a dot (see the module docstring).

  The rows are first grouped g at a time into [N/g, g*C] rows: Eigen's GEMV runs 2-3x
  faster on such wide rows than on C = 64 (measured: [131072, 64] 32 ms -> 15 ms).
  """
  n, c = m.shape
  g = math.gcd(n, 64)
  wide = jnp.dot(jnp.ones((n // g,), m.dtype), m.reshape(n // g, g * c))
  return wide.reshape(g, c).sum(axis=0)


def _stats(x2):
  n = x2.shape[0]
  mean = _row_sum(x2) / n
  var = jnp.maximum(0.0, _row_sum(x2 * x2) / n - mean * mean)
  return mean, var


@jax.custom_vjp
def batch_norm_train(x2, scale, bias, epsilon):
  """Training-mode BatchNorm of rows x2 [N, C] (float32): (y [N, C], mean [C], var [C])."""
  return _fwd(x2, scale, bias, epsilon)[0]


def _fwd(x2, scale, bias, epsilon):
  mean, var = _stats(x2)
  r = jax.lax.rsqrt(var + epsilon)
  y = (x2 - mean) * (r * scale) + bias
  return (y, mean, var), (x2, mean, r, scale, epsilon)


def _bwd(res, cotangents):
  x2, mean, r, scale, epsilon = res
  dy, dmean, dvar = cotangents
  n = x2.shape[0]
  centred = x2 - mean
  xhat = centred * r
  sum_dy = _row_sum(dy)
  sum_dy_xhat = _row_sum(dy * xhat)
  dx = (scale * r / n) * (n * dy - sum_dy - xhat * sum_dy_xhat)
  # the batch statistics are outputs too (running averages): their own gradients
  dx = dx + dmean / n + dvar * (2.0 / n) * centred
  return dx, sum_dy_xhat, sum_dy, jnp.zeros_like(epsilon)


batch_norm_train.defvjp(_fwd, _bwd)


class DotBatchNorm(nn.Module):
  """flax.linen.BatchNorm over the last axis, with its batch sums written as dots.

  Attributes are those of flax's BatchNorm that the ResNets use.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones((features,), jnp.float32))
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, scale)
    if self.use_running_average:
      y = (x.astype(jnp.float32) - ra_mean.value) * (
          jax.lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return y.astype(dtype)
    x2 = x.reshape(-1, features).astype(jnp.float32)
    y, mean, var = batch_norm_train(x2, scale.astype(jnp.float32), bias.astype(jnp.float32),
                                    jnp.asarray(self.epsilon, jnp.float32))
    if not self.is_initializing():
      mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.reshape(x.shape).astype(dtype)
