"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

An online network (encoder -> projector -> predictor) learns to predict the projection
that a *target* network (encoder -> projector, no predictor) gives for the other view of
the same image. The target is not trained by gradients: after every optimizer step its
parameters (and BatchNorm statistics) move towards the online ones by an exponential
moving average whose rate grows from tau_base to 1 along a cosine (BYOL sec. 3.2).

The target network and the rule for its rate live in `cxr_jax.ssl.momentum` (shared with
MoCo's key encoder): a stage schedule hp['ema_momentum'] wins (the paper's rule as a
schedule is `curriculum.schedule('cosine', 0.996, 1.0)`), else the cosine of
hp['progress'] from cfg.ema_base (cfg.ema_cosine, the default), else cfg.ema_base.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.models import heads
from cxr_jax.ssl import common, momentum

DEFAULTS = ml_collections.ConfigDict(dict(
    proj_hidden_dim=512,   # projector hidden width (paper: 4096)
    proj_dim=128,          # projection / prediction dimension (paper: 256)
    proj_layers=2,         # BYOL's projector: Dense -> BN -> ReLU -> Dense
    pred_hidden_dim=512,   # predictor hidden width (paper: 4096)
    ema_base=0.996,        # tau_base (paper: 0.996 at batch 4096; 0.99 for smaller batches)
    ema_cosine=True,       # tau increases to 1 along a cosine of hp['progress']
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's normalised regression loss (BYOL eq. 2), mean over the batch.

  Args:
    p: [B, D] online predictions q_theta(z_theta).
    z: [B, D] target projections z'_xi; the gradient is stopped on z (it comes from the
      target network, which only moves by EMA).
  Returns:
    scalar: mean_b || p_b/||p_b|| - z_b/||z_b|| ||^2  (= 2 - 2 cos(p_b, z_b)).
  """
  p = common.l2_normalize(p)
  z = common.l2_normalize(jax.lax.stop_gradient(z))
  return jnp.mean(jnp.sum((p - z) ** 2, axis=-1))


def build_model(encoder, cfg):
  projector = heads.ProjectionMLP(cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)
  predictor = heads.Predictor(cfg.pred_hidden_dim, cfg.proj_dim)
  return heads.SSLModel(encoder=encoder, projector=projector, predictor=predictor)


def init_extra(params, batch_stats, cfg):
  """{'target': {'params', 'batch_stats'}}: the target starts equal to the online network."""
  del cfg
  return {'target': momentum.init_target(params, batch_stats)}


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  """Symmetrised BYOL loss (BYOL eq. 2 summed over both view orders), in [0, 8]."""
  view1, view2 = inputs['view1'], inputs['view2']
  batch = view1.shape[0]
  views = jnp.concatenate([view1, view2], axis=0)
  # online network on both views in one pass: BatchNorm sees all 2B views
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, views,
                             train=True, mutable=['batch_stats'])
  # target network in training mode (batch statistics, as in BYOL); its own running
  # statistics are not used: the target's batch_stats are an EMA of the online ones
  target = extra['target']
  t_out, _ = momentum.target_model(model).apply(
      {'params': target['params'], 'batch_stats': target['batch_stats']}, views,
      train=True, mutable=['batch_stats'])
  p = out['prediction']
  z = jax.lax.stop_gradient(t_out['projection'])
  loss_12 = regression_loss(p[:batch], z[batch:])  # predict view 2's target from view 1
  loss_21 = regression_loss(p[batch:], z[:batch])  # and view 1's from view 2
  loss = loss_12 + loss_21
  metrics = {'loss': loss, 'ema_momentum': momentum.target_momentum(hp, cfg)}
  return loss, (updates['batch_stats'], metrics, {'features': out['features'][:batch]})


def update_extra(extra, params, batch_stats, hp, cfg, aux):
  """Moves the target towards the updated online network (after the optimizer step)."""
  del aux
  tau = momentum.target_momentum(hp, cfg)
  return {**extra, 'target': momentum.update_target(extra['target'], params, batch_stats, tau)}
