"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce, LeCun; ICLR 2022).

loss = lambda s(Z, Z') + mu v(Z, Z') + nu [c(Z) + c(Z')]       (VICReg eq. 6)

  invariance  s = mean over the B x D entries of (Z - Z')^2
  variance    v = hinge on the per-dimension std over the batch,
                  mean_j max(0, gamma - sqrt(Var(z^j) + eps)), averaged over the two views
  covariance  c(Z) = sum_{i != j} Cov(Z)_ij^2 / D,  Cov with the unbiased 1/(B - 1)

The normalisations follow the authors' reference implementation (facebookresearch/vicreg,
main_vicreg.py), for which the weights 25/25/1 were tuned: the paper's eq. 5 writes the
invariance as 1/B sum_b ||z_b - z'_b||^2 (D times ours) and eq. 6 sums the two views'
variance terms (twice ours). Var is the unbiased batch variance, as in the paper's
eq. 1 and the code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.ssl import common

DEFAULTS = ml_collections.ConfigDict(dict(
    proj_hidden_dim=512,   # expander width (paper: 8192)
    proj_dim=512,          # embedding dimension D (paper: 8192)
    proj_layers=3,         # Dense-BN-ReLU, Dense-BN-ReLU, Dense (paper: 3)
    sim_weight=25.0,       # lambda, invariance
    var_weight=25.0,       # mu, variance
    cov_weight=1.0,        # nu, covariance
    gamma=1.0,             # target standard deviation
    eps=1e-4,              # added to the variance under the square root
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def loss_terms(z1: jax.Array, z2: jax.Array, gamma: float = 1.0, eps: float = 1e-4):
  """The three VICReg terms (unweighted), see the module docstring.

  Args:
    z1, z2: [B, D] embeddings of the two views; B >= 2 (B = 1 raises ValueError: the
      unbiased variance and covariance over one example are undefined).
    gamma: target std of each dimension.
    eps: numerical floor inside the square root of the variance.
  Returns:
    dict(invariance, variance, covariance) of scalars.
  """
  batch, dim = z1.shape
  if batch < 2:
    raise ValueError(f'vicreg: variance and covariance need a batch of at least 2 '
                     f'(undefined for B={batch})')
  z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
  invariance = jnp.mean((z1 - z2) ** 2)

  def variance(z):  # eq. 1: mean_j max(0, gamma - S(z^j, eps))
    std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + eps)
    return jnp.mean(jax.nn.relu(gamma - std))

  def covariance(z):  # eq. 3-4: off-diagonal squared covariances / D
    z = z - jnp.mean(z, axis=0)
    cov = z.T @ z / (batch - 1)
    return (jnp.sum(cov * cov) - jnp.sum(jnp.diagonal(cov) ** 2)) / dim

  return {'invariance': invariance,
          'variance': 0.5 * (variance(z1) + variance(z2)),
          'covariance': covariance(z1) + covariance(z2)}


def loss(z1: jax.Array, z2: jax.Array, sim_weight: float = 25.0, var_weight: float = 25.0,
         cov_weight: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> jax.Array:
  """VICReg loss (eq. 6) of two [B, D] embeddings (B >= 2), a scalar."""
  return weighted_sum(loss_terms(z1, z2, gamma, eps), sim_weight, var_weight, cov_weight)


def weighted_sum(terms, sim_weight: float, var_weight: float, cov_weight: float) -> jax.Array:
  """lambda s + mu v + nu c (eq. 6) of the `loss_terms` dict."""
  return (sim_weight * terms['invariance'] + var_weight * terms['variance']
          + cov_weight * terms['covariance'])


build_model = common.projector_model
init_extra = common.no_extra
update_extra = common.keep_extra


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  view1, view2 = inputs['view1'], inputs['view2']
  del extra, hp

  def loss_of(z1, z2):  # the loss and its three terms (logged)
    t = loss_terms(z1, z2, cfg.gamma, cfg.eps)
    return weighted_sum(t, cfg.sim_weight, cfg.var_weight, cfg.cov_weight), t

  return common.two_view_loss(model, params, batch_stats, view1, view2, loss_of)

