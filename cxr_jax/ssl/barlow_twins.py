"""Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny; ICML 2021).

The two views' embeddings are standardised along the (global) batch, their D x D
cross-correlation matrix C is computed, and the loss pushes C towards the identity:
invariance on the diagonal, redundancy reduction off it (Barlow Twins eq. 1-2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.ssl import common

DEFAULTS = ml_collections.ConfigDict({
    'proj_hidden_dim': 512,   # projector width (paper: 8192)
    'proj_dim': 512,          # embedding dimension D (paper: 8192)
    'proj_layers': 3,         # Dense-BN-ReLU, Dense-BN-ReLU, Dense (paper: 3)
    'lambda': 5e-3,           # off-diagonal weight lambda (paper: 5e-3)
    'eps': 1e-5,              # added to the batch variance (the reference code's BatchNorm eps)
    'optimizer': ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
})


def cross_correlation(z1: jax.Array, z2: jax.Array, eps: float = 1e-5) -> jax.Array:
  """The cross-correlation matrix C of Barlow Twins eq. 2.

  Each embedding dimension is standardised over the batch, z~ = (z - mean_b z) /
  sqrt(var_b z + eps) (biased variance, as BatchNorm without affine in the reference
  code), and C = z~1^T z~2 / B. With eps = 0 this is exactly eq. 2:
  C_ij = sum_b z1_bi z2_bj / (sqrt(sum_b z1_bi^2) sqrt(sum_b z2_bj^2)) on centred z.

  Args:
    z1, z2: [B, D] embeddings of the two views, B >= 2.
    eps: variance floor.
  Returns:
    [D, D] matrix C, entries in [-1, 1] (for eps = 0).
  """
  batch = z1.shape[0]
  if batch < 2:
    raise ValueError(f'barlow_twins: the cross-correlation needs a batch of at least 2 '
                     f'(batch statistics are undefined for B={batch})')

  def standardise(z):
    z = z.astype(jnp.float32)
    z = z - jnp.mean(z, axis=0)
    return z * jax.lax.rsqrt(jnp.mean(z * z, axis=0) + eps)

  return standardise(z1).T @ standardise(z2) / batch


def loss(z1: jax.Array, z2: jax.Array, lambd: float = 5e-3, eps: float = 1e-5) -> jax.Array:
  """Barlow Twins loss (eq. 1): sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2.

  Args:
    z1, z2: [B, D] embeddings of the two views (B >= 2; B = 1 raises ValueError,
      since a correlation over one example is undefined).
    lambd: lambda, the off-diagonal (redundancy reduction) weight.
    eps: variance floor of the batch standardisation.
  Returns:
    scalar loss; 0 iff C is the identity.
  """
  c = cross_correlation(z1, z2, eps)
  diag = jnp.diagonal(c)
  on_diag = jnp.sum((1.0 - diag) ** 2)
  off_diag = jnp.sum(c * c) - jnp.sum(diag * diag)
  return on_diag + lambd * off_diag


build_model = common.projector_model
init_extra = common.no_extra
update_extra = common.keep_extra


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  view1, view2 = inputs['view1'], inputs['view2']
  del extra, hp
  return common.two_view_loss(model, params, batch_stats, view1, view2,
                              lambda z1, z2: (loss(z1, z2, cfg['lambda'], cfg.eps), {}))

