"""Pieces shared by the methods without a target network (SimCLR, Barlow Twins, VICReg)."""
from __future__ import annotations

import jax.numpy as jnp

from cxr_jax.models import heads


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
