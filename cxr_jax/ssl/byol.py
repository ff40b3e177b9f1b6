"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020).

An online network (encoder -> projector -> predictor) learns to predict the projection
that a *target* network (encoder -> projector, no predictor) gives for the other view of
the same image. The target is not trained by gradients: after every optimizer step its
parameters (and BatchNorm statistics) move towards the online ones by an exponential
moving average whose rate grows from tau_base to 1 along a cosine (BYOL sec. 3.2).

The EMA helpers here (`ema_momentum`, `target_momentum`, `ema_update`, `init_target`)
are shared with MoCo, whose key encoder is the same kind of moving average.

Which EMA rate a step uses (`target_momentum`):
  1. hp['ema_momentum'] when the stage schedules it (the loop puts the key in `hp`):
     an explicit curriculum schedule wins over the method's default. The paper's
     rule is the schedule `curriculum.schedule('cosine', 0.996, 1.0)`.
  2. otherwise, when cfg.ema_cosine is true, the paper's rule from hp['progress'] = k/K:
     tau = 1 - (1 - cfg.ema_base) (cos(pi k / K) + 1) / 2.
  3. otherwise the constant cfg.ema_base.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cxr_jax.models import heads

DEFAULTS = ml_collections.ConfigDict(dict(
    proj_hidden_dim=512,   # projector hidden width (paper: 4096)
    proj_dim=128,          # projection / prediction dimension (paper: 256)
    proj_layers=2,         # BYOL's projector: Dense -> BN -> ReLU -> Dense
    pred_hidden_dim=512,   # predictor hidden width (paper: 4096)
    ema_base=0.996,        # tau_base (paper: 0.996 at batch 4096; 0.99 for smaller batches)
    ema_cosine=True,       # tau increases to 1 along a cosine of hp['progress']
))


def ema_momentum(step, total_steps, base: float):
  """BYOL's target EMA rate: tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2.

  Args:
    step: k, the current step (python number or traced scalar); also accepts a
      progress fraction with total_steps=1.
    total_steps: K, the number of training steps (k is clipped to [0, K]).
    base: tau_base, the rate at k = 0; tau_K = 1.
  Returns:
    scalar tau_k in [base, 1].
  """
  k = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, jnp.asarray(total_steps, jnp.float32))
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * k / total_steps) + 1.0) / 2.0


def target_momentum(hp, cfg):
  """The EMA rate of this step (see the module docstring for which rule wins)."""
  if 'ema_momentum' in hp:
    return jnp.asarray(hp['ema_momentum'], jnp.float32)
  if cfg.ema_cosine:
    return ema_momentum(hp['progress'], 1.0, cfg.ema_base)
  return jnp.asarray(cfg.ema_base, jnp.float32)


def ema_update(target, online, momentum):
  """xi <- tau xi + (1 - tau) theta, leaf by leaf (BYOL eq. 1 of sec. 3.1).

  `target` and `online` are pytrees of the same structure; `online` may hold extra
  subtrees (e.g. 'predictor') that the target lacks: only the target's keys are updated.
  """
  online = {k: online[k] for k in target}
  return jax.tree_util.tree_map(
      lambda t, o: (momentum * t + (1.0 - momentum) * o).astype(t.dtype), target, online)


def init_target(params, batch_stats, exclude=('predictor',)):
  """A copy of the online params and batch stats without the `exclude` subtrees.

  Copied leaf by leaf so that the target never aliases an online buffer (the train step
  donates its state).
  """
  def copy(tree):
    return {k: jax.tree_util.tree_map(jnp.copy, v) for k, v in tree.items() if k not in exclude}
  return {'params': copy(params), 'batch_stats': copy(batch_stats)}


def target_model(model):
  """The target network: the online model without its predictor."""
  return model.clone(predictor=None)


def regression_loss(p: jax.Array, z: jax.Array) -> jax.Array:
  """BYOL's normalised regression loss (BYOL eq. 2), mean over the batch.

  Args:
    p: [B, D] online predictions q_theta(z_theta).
    z: [B, D] target projections z'_xi; the gradient is stopped on z (it comes from the
      target network, which only moves by EMA).
  Returns:
    scalar: mean_b || p_b/||p_b|| - z_b/||z_b|| ||^2  (= 2 - 2 cos(p_b, z_b)).
  """
  p = p.astype(jnp.float32)
  z = jax.lax.stop_gradient(z.astype(jnp.float32))
  p = p * jax.lax.rsqrt(jnp.maximum(jnp.sum(p * p, axis=-1, keepdims=True), 1e-12))
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))
  return jnp.mean(jnp.sum((p - z) ** 2, axis=-1))


def build_model(encoder, cfg):
  projector = heads.ProjectionMLP(cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers)
  predictor = heads.Predictor(cfg.pred_hidden_dim, cfg.proj_dim)
  return heads.SSLModel(encoder=encoder, projector=projector, predictor=predictor)


def init_extra(params, batch_stats, cfg):
  """{'target': {'params', 'batch_stats'}}: the target starts equal to the online network."""
  del cfg
  return {'target': init_target(params, batch_stats)}


def loss_fn(model, params, batch_stats, extra, view1, view2, hp, cfg):
  """Symmetrised BYOL loss (BYOL eq. 2 summed over both view orders), in [0, 8]."""
  batch = view1.shape[0]
  views = jnp.concatenate([view1, view2], axis=0)
  # online network on both views in one pass: BatchNorm sees all 2B views
  out, updates = model.apply({'params': params, 'batch_stats': batch_stats}, views,
                             train=True, mutable=['batch_stats'])
  # target network in training mode (batch statistics, as in BYOL); its own running
  # statistics are not used: the target's batch_stats are an EMA of the online ones
  target = extra['target']
  t_out, _ = target_model(model).apply(
      {'params': target['params'], 'batch_stats': target['batch_stats']}, views,
      train=True, mutable=['batch_stats'])
  p = out['prediction']
  z = jax.lax.stop_gradient(t_out['projection'])
  loss_12 = regression_loss(p[:batch], z[batch:])  # predict view 2's target from view 1
  loss_21 = regression_loss(p[batch:], z[:batch])  # and view 1's from view 2
  loss = loss_12 + loss_21
  metrics = {'loss': loss, 'ema_momentum': target_momentum(hp, cfg)}
  return loss, (updates['batch_stats'], metrics, out['features'][:batch])


def update_extra(extra, params, batch_stats, hp, cfg, aux):
  """Moves the target towards the updated online network (after the optimizer step)."""
  del aux
  tau = target_momentum(hp, cfg)
  target = extra['target']
  return {**extra, 'target': {
      'params': ema_update(target['params'], params, tau),
      'batch_stats': ema_update(target['batch_stats'], batch_stats, tau)}}
