"""Momentum (EMA) target networks, shared by the methods that have one (BYOL, MoCo).

As solo-learn's `solo/utils/momentum.py`: the target (BYOL) or key encoder (MoCo) is a
copy of the online network without its predictor that gradients never train; after every
optimizer step its parameters and BatchNorm statistics move towards the online ones,
xi <- tau xi + (1 - tau) theta (BYOL eq. 1 of sec. 3.1). The method keeps it in
`extra['target'] = {'params', 'batch_stats'}` (`init_target`, `ema_update`) and runs it
as `target_model(model)`.

Which EMA rate tau a step uses (`target_momentum`; the method's cfg has `ema_base` and
`ema_cosine`):
  1. hp['ema_momentum'] when the stage schedules it (the loop puts the key in `hp`):
     an explicit curriculum schedule wins over the method's default. BYOL's rule is the
     schedule `curriculum.schedule('cosine', 0.996, 1.0)`.
  2. otherwise, when cfg.ema_cosine is true, BYOL's cosine rule (sec. 3.2) of
     hp['progress'] = k/K: tau = 1 - (1 - cfg.ema_base) (cos(pi k / K) + 1) / 2
     (BYOL; MoCo v3).
  3. otherwise the constant cfg.ema_base (MoCo v2: m = 0.999).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


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


def update_target(target, params, batch_stats, momentum):
  """The target {'params', 'batch_stats'} moved towards the online network by `ema_update`."""
  return {'params': ema_update(target['params'], params, momentum),
          'batch_stats': ema_update(target['batch_stats'], batch_stats, momentum)}


def target_model(model):
  """The target network: the online model without its predictor."""
  return model.clone(predictor=None)
