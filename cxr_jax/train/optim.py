"""Optimisers and learning-rate schedules, all from optax.

Weight decay (and LARS's trust-ratio adaptation) is applied to convolution and dense
kernels only: biases and normalisation parameters are excluded, as in SimCLR and BYOL.
"""
from __future__ import annotations

import math

import jax
import ml_collections
import optax

OPTIMIZERS = ('sgd', 'adamw', 'lars')
LR_SCALINGS = ('none', 'linear', 'sqrt')


def decay_mask(params):
  """True for the leaves that get weight decay: kernels (ndim > 1), not biases/BN."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def scaled_learning_rate(cfg: ml_collections.ConfigDict, batch_size: int) -> float:
  """`cfg.lr` scaled by the batch size: lr * B/base (linear) or lr * sqrt(B/base)."""
  ratio = batch_size / cfg.base_batch_size
  if cfg.lr_scaling == 'linear':
    return cfg.lr * ratio
  if cfg.lr_scaling == 'sqrt':
    return cfg.lr * math.sqrt(ratio)
  if cfg.lr_scaling == 'none':
    return cfg.lr
  raise ValueError(f'optimizer.lr_scaling must be one of {LR_SCALINGS}, got {cfg.lr_scaling!r}')


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int, batch_size: int):
  """Linear warmup to the scaled peak rate, then cosine decay to zero."""
  peak = scaled_learning_rate(cfg, batch_size)
  warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, batch_size: int):
  """Returns (optax transform, learning-rate schedule) for an optimizer config.

  cfg fields: name (sgd | adamw | lars), lr, base_batch_size, lr_scaling, warmup_steps,
  weight_decay, momentum, and for adamw b1, b2; for lars trust_coefficient.
  """
  schedule = learning_rate_schedule(cfg, total_steps, batch_size)
  if cfg.name == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                     optax.sgd(schedule, momentum=cfg.momentum, nesterov=True))
  elif cfg.name == 'adamw':
    tx = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                     mask=decay_mask)
  elif cfg.name == 'lars':
    tx = optax.lars(schedule, weight_decay=cfg.weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=cfg.trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=cfg.momentum)
  else:
    raise ValueError(f'optimizer.name must be one of {OPTIMIZERS}, got {cfg.name!r}')
  return tx, schedule


def optimizer_config(name: str = 'adamw', lr: float = 1e-3, **overrides) -> ml_collections.ConfigDict:
  """An optimizer config with every field present (so a locked config accepts overrides)."""
  cfg = ml_collections.ConfigDict(dict(
      name=name, lr=lr, base_batch_size=256, lr_scaling='linear', warmup_steps=0,
      weight_decay=1e-4, momentum=0.9, b1=0.9, b2=0.999, trust_coefficient=0.001))
  cfg.update(overrides)
  return cfg
