"""Pieces shared by the methods: L2 normalisation (SimCLR, MoCo, BYOL), the two augmented
views every two-view method trains on (`two_view_inputs`) and, for the methods without a
target network (SimCLR, Barlow Twins, VICReg), the projector model, the empty `extra` and
the two-view loss. The EMA target network is in `cxr_jax.ssl.momentum`."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cxr_jax.data import augment
from cxr_jax.models import heads


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| along the last axis, in float32: x * rsqrt(max(sum x^2, 1e-12)), so a row
  of norm under 1e-6 is scaled by 1e6 instead of divided by (nearly) zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def two_view_inputs(rng, images, hp, image_size: int, cfg, second=None):
  """The inputs of a two-view method: {'view1', 'view2'}, two independently augmented
  views [B, S, S, C] of each image at strength hp['strength'] (`augment.two_views`);
  view 2 is cut from `second` when given (patient-aware positives)."""
  del cfg
  view1, view2 = augment.two_views(rng, images, hp['strength'], image_size, second=second)
  return {'view1': view1, 'view2': view2}


def projector_model(encoder, cfg):
  """Encoder + projection MLP (cfg: proj_hidden_dim, proj_dim, proj_layers)."""
  projector = heads.ProjectionMLP(cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)
  return heads.SSLModel(encoder=encoder, projector=projector)


def no_extra(params, batch_stats, cfg):
  del params, batch_stats, cfg
  return {}


def keep_extra(extra, params, batch_stats, hp, cfg, aux):
  del params, batch_stats, hp, cfg, aux
  return extra


def project_two_views(model, params, batch_stats, view1, view2):
  """Both views in one training-mode forward pass, so BatchNorm sees the statistics of
  all 2B views. Returns (z1 [B, D], z2 [B, D], features of view1 [B, C], batch_stats)."""
  batch = view1.shape[0]
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                             jnp.concatenate([view1, view2], axis=0), train=True,
                             mutable=['batch_stats'])
  z = out['projection']
  return z[:batch], z[batch:], out['features'][:batch], updates['batch_stats']


def two_view_loss(model, params, batch_stats, view1, view2, loss_of):
  """The `loss_fn` result of a method whose loss depends only on the two projections.

  Args:
    model, params, batch_stats, view1, view2: as in `loss_fn`.
    loss_of: (z1 [B, D], z2 [B, D]) -> (scalar loss, dict of scalar metrics besides 'loss').
  Returns:
    (loss, (new_batch_stats, {'loss': loss, **metrics}, {'features': features of view1})).
  """
  z1, z2, features, batch_stats = project_two_views(model, params, batch_stats, view1, view2)
  loss, metrics = loss_of(z1, z2)
  return loss, (batch_stats, {'loss': loss, **metrics}, {'features': features})
