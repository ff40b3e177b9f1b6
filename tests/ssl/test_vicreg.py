"""Tests for cxr_jax.ssl.vicreg: the loss against VICReg eq. 1-6 (reference normalisation)."""
import math

import numpy as np
import pytest

from cxr_jax.ssl import vicreg
from tests.ssl.test_simclr import run_sharded_check  # the one 4-device script


def numpy_vicreg(z1, z2, sim=25.0, var=25.0, cov=1.0, gamma=1.0, eps=1e-4):
  """VICReg from its equations, with loops:
    s = 1/(B D) sum_b sum_d (z_bd - z'_bd)^2                    (eq. 5, per entry)
    v(Z) = 1/D sum_j max(0, gamma - sqrt(Var(z^j) + eps))       (eq. 1), Var unbiased
    c(Z) = 1/D sum_{i != j} C(Z)_ij^2, C = 1/(B-1) sum_b (z_b - zbar)(z_b - zbar)^T  (eq. 3-4)
    loss = sim s + var (v(Z) + v(Z')) / 2 + cov (c(Z) + c(Z'))  (eq. 6; the variance pair
  averaged as in the reference code)."""
  z1 = np.asarray(z1, np.float64)
  z2 = np.asarray(z2, np.float64)
  batch, dim = z1.shape
  s = sum((z1[b, d] - z2[b, d]) ** 2 for b in range(batch) for d in range(dim)) / (batch * dim)

  def v(z):
    total = 0.0
    for j in range(dim):
      mean = sum(z[:, j]) / batch
      variance = sum((x - mean) ** 2 for x in z[:, j]) / (batch - 1)
      total += max(0.0, gamma - math.sqrt(variance + eps))
    return total / dim

  def c(z):
    mean = z.sum(axis=0) / batch
    total = 0.0
    for i in range(dim):
      for j in range(dim):
        if i != j:
          cij = sum((z[b, i] - mean[i]) * (z[b, j] - mean[j]) for b in range(batch)) / (batch - 1)
          total += cij ** 2
    return total / dim

  return sim * s + var * (v(z1) + v(z2)) / 2 + cov * (c(z1) + c(z2))


@pytest.mark.parametrize('batch,dim', [(2, 3), (5, 4), (16, 8), (3, 1)])
def test_loss_matches_numpy(batch, dim):
  rng = np.random.default_rng(batch * 10 + dim)
  # a small scale so that some dimensions fall under the std target (hinge active)
  z1 = (0.7 * rng.normal(size=(batch, dim))).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(batch, dim))).astype(np.float32)
  np.testing.assert_allclose(float(vicreg.loss(z1, z2)), numpy_vicreg(z1, z2), rtol=1e-5,
                             atol=1e-5)
  got = float(vicreg.loss(z1, z2, 1.0, 2.0, 3.0, gamma=0.5, eps=1e-3))
  np.testing.assert_allclose(got, numpy_vicreg(z1, z2, 1.0, 2.0, 3.0, 0.5, 1e-3), rtol=1e-5,
                             atol=1e-5)


def test_hand_cases():
  # column 0 = (1, -1): unbiased var 2, std > 1, no hinge; column 1 constant: std =
  # sqrt(1e-4) = 0.01, hinge 0.99; v = (0 + 0.99) / 2 per view; equal views: s = 0;
  # covariance of a constant column is 0. loss = 25 * 0.495 = 12.375
  z = np.asarray([[1, 0], [-1, 0]], np.float32)
  terms = vicreg.loss_terms(z, z)
  np.testing.assert_allclose(float(terms['variance']), 0.495, rtol=1e-6)
  assert float(terms['invariance']) == 0.0 and float(terms['covariance']) == 0.0
  np.testing.assert_allclose(float(vicreg.loss(z, z)), 12.375, rtol=1e-6)
  # perfectly correlated columns (1, -1), (1, -1): Cov = [[2, 2], [2, 2]], off-diagonal
  # squares 4 + 4 = 8, / D = 4 per view, 8 for both; no hinge; loss = 8
  z = np.asarray([[1, 1], [-1, -1]], np.float32)
  np.testing.assert_allclose(float(vicreg.loss(z, z)), 8.0, rtol=1e-6)
  # invariance alone: views differing by 1 everywhere: s = 1, times 25
  z2 = z + 1.0
  np.testing.assert_allclose(float(vicreg.loss_terms(z, z2)['invariance']), 1.0, rtol=1e-6)


def test_batch_of_one_raises():
  with pytest.raises(ValueError, match='at least 2'):
    vicreg.loss(np.ones((1, 4)), np.ones((1, 4)))


def test_sharded_loss_equals_single_device():
  run_sharded_check([('vicreg', dict(proj_hidden_dim=16, proj_dim=8))])
