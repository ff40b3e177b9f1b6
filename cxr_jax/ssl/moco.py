"""MoCo v2 and v3: momentum contrast, chosen by `cfg.variant`.

v2 (He et al., CVPR 2020; Chen, Fan, Girshick, He, arXiv 2003.04297): the query q is the
online projection of view 1, the positive key k the momentum (EMA) encoder's projection
of view 2, and the negatives a FIFO queue of the K most recent keys (InfoNCE, MoCo eq. 1).
After each step the keys of the whole global batch are enqueued. The projector is a
2-layer MLP without BatchNorm (v2); the key encoder's rate is a constant m = 0.999.

v3 (Chen, Xie, He, ICCV 2021): no queue; the negatives are the other keys of the global
batch, the loss is symmetrised over the two views, the query side has a predictor, and
the InfoNCE term is scaled by 2 tau (Algorithm 1 of the v3 paper). The key encoder's rate
grows from 0.99 to 1 along a cosine (as in BYOL).

MoCo v1/v2 used "shuffling BN" to stop BatchNorm leaking which key belongs to a query
through per-device statistics. Here BatchNorm statistics are taken over the global batch
(the step is jit-compiled over a batch-sharded array), like the SyncBN of MoCo v3, so no
shuffle is needed.

The key encoder is an EMA of the online encoder and projector (params and BatchNorm
statistics), kept in `extra['target']` (`cxr_jax.ssl.momentum`, shared with BYOL); its
rate is `momentum.target_momentum` (hp['ema_momentum'] when the stage schedules it, else
cfg.ema_base, cosine-increased when cfg.ema_cosine). The temperature is hp['temperature']
(v2 paper 0.2; v3 ResNet 1.0).

For v2, `loss_fn` returns the normalised keys of the global batch in aux['keys'] ([B, D]),
which the train step hands to `update_extra` (enqueue) with the rest of `aux`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cxr_jax.models import heads
from cxr_jax.ssl import common, momentum

VARIANTS = ('v2', 'v3')

DEFAULTS = ml_collections.ConfigDict(dict(
    variant='v2',          # 'v2' (queue, asymmetric) or 'v3' (in-batch, symmetric, predictor)
    proj_hidden_dim=512,   # projector hidden width (v2 paper: 2048; v3: 4096)
    proj_dim=128,          # key / query dimension (v2 paper: 128; v3: 256)
    proj_layers=2,         # v2: 2-layer MLP head; v3: 3 layers
    proj_bn=False,         # BatchNorm in the projector (v2: no; v3: yes)
    pred_hidden_dim=512,   # v3 predictor hidden width (paper: 4096); unused by v2
    queue_size=4096,       # v2 negatives K (paper: 65536, more than our demo data set)
    ema_base=0.999,        # key encoder rate m (v2 paper: 0.999 constant; v3: 0.99)
    ema_cosine=False,      # v3 raises m from ema_base to 1 along a cosine of the progress
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def infonce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature) -> jax.Array:
  """InfoNCE (MoCo eq. 1), mean over the batch; q, k and queue are L2-normalised here.

  Args:
    q: [B, D] queries.
    k: [B, D] keys; k[i] is the positive of q[i].
    queue: [K, D] negatives. With K > 0 (MoCo v2) the logits of q[i] are
      [q_i . k_i, q_i . queue_1, ..., q_i . queue_K] / tau with the positive first.
      With K = 0 (MoCo v3) the negatives are the other keys of the (global) batch:
      logits q k^T / tau of shape [B, B], positives on the diagonal.
    temperature: tau.
  Returns:
    scalar: mean_i -log( exp(q_i.k_i/tau) / sum_j exp(logit_ij) ).
  """
  q, k = common.l2_normalize(q), common.l2_normalize(k)
  if queue.shape[0] == 0:
    logits = (q @ k.T) / temperature
    labels = jnp.arange(q.shape[0])
  else:
    queue = common.l2_normalize(queue)
    positive = jnp.sum(q * k, axis=-1, keepdims=True)    # [B, 1]
    negatives = q @ queue.T                               # [B, K]
    logits = jnp.concatenate([positive, negatives], axis=1) / temperature
    labels = jnp.zeros((q.shape[0],), jnp.int32)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def enqueue(queue: jax.Array, keys: jax.Array, ptr: jax.Array):
  """FIFO enqueue of a whole (global) batch of keys, overwriting the oldest entries.

  Args:
    queue: [K, D] queue; entry `ptr` is the oldest.
    keys: [B, D] keys to add (B <= K), in order: keys[0] goes to slot ptr, keys[1] to
      ptr + 1, ... wrapping around the end of the queue.
    ptr: int32 scalar, the slot of the oldest entry.
  Returns:
    (new queue [K, D], new ptr = (ptr + B) mod K).
  """
  size, batch = queue.shape[0], keys.shape[0]
  if batch > size:
    raise ValueError(f'moco: the queue ({size}) must hold at least one global batch ({batch})')
  slots = (ptr + jnp.arange(batch)) % size
  queue = queue.at[slots].set(keys.astype(queue.dtype))
  return queue, ((ptr + batch) % size).astype(jnp.int32)


def _check_variant(cfg):
  if cfg.variant not in VARIANTS:
    raise ValueError(f'pretrain.moco.variant must be one of {VARIANTS}, got {cfg.variant!r}')


def build_model(encoder, cfg):
  _check_variant(cfg)
  projector = heads.ProjectionMLP(cfg.proj_hidden_dim, cfg.proj_dim, num_layers=cfg.proj_layers,
                                  use_bn=cfg.proj_bn)
  predictor = heads.Predictor(cfg.pred_hidden_dim, cfg.proj_dim) if cfg.variant == 'v3' else None
  return heads.SSLModel(encoder=encoder, projector=projector, predictor=predictor)


def init_extra(params, batch_stats, cfg):
  """{'target': key encoder} plus, for v2, {'queue': [K, D], 'queue_ptr': int32}.

  The queue starts as random unit vectors (as in the MoCo code), from a fixed key.
  """
  _check_variant(cfg)
  extra = {'target': momentum.init_target(params, batch_stats)}
  if cfg.variant == 'v2':
    queue = jax.random.normal(jax.random.PRNGKey(0), (cfg.queue_size, cfg.proj_dim), jnp.float32)
    extra['queue'] = common.l2_normalize(queue)
    extra['queue_ptr'] = jnp.zeros((), jnp.int32)
  return extra


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  view1, view2 = inputs['view1'], inputs['view2']
  _check_variant(cfg)
  tau = hp['temperature']
  target = extra['target']
  key_model = momentum.target_model(model)
  key_vars = {'params': target['params'], 'batch_stats': target['batch_stats']}
  online_vars = {'params': params, 'batch_stats': batch_stats}
  rate = momentum.target_momentum(hp, cfg)
  if cfg.variant == 'v2':
    # queries from view 1, keys from view 2 (MoCo is asymmetric)
    out, updates = model.apply(online_vars, view1, train=True, mutable=['batch_stats'])
    k_out, _ = key_model.apply(key_vars, view2, train=True, mutable=['batch_stats'])
    k = jax.lax.stop_gradient(common.l2_normalize(k_out['projection']))  # keys get no gradient
    queue = jax.lax.stop_gradient(extra['queue'])
    loss = infonce(out['projection'], k, queue, tau)
    metrics = {'loss': loss, 'ema_momentum': rate}
    return loss, (updates['batch_stats'], metrics, {'features': out['features'], 'keys': k})
  batch = view1.shape[0]
  views = jnp.concatenate([view1, view2], axis=0)
  out, updates = model.apply(online_vars, views, train=True, mutable=['batch_stats'])
  k_out, _ = key_model.apply(key_vars, views, train=True, mutable=['batch_stats'])
  q = out['prediction']
  k = jax.lax.stop_gradient(k_out['projection'])
  empty = jnp.zeros((0, q.shape[-1]), jnp.float32)
  # v3 Algorithm 1: ctr(q1, k2) + ctr(q2, k1), each CE scaled by 2 tau
  loss = 2.0 * tau * (infonce(q[:batch], k[batch:], empty, tau)
                      + infonce(q[batch:], k[:batch], empty, tau))
  metrics = {'loss': loss, 'ema_momentum': rate}
  return loss, (updates['batch_stats'], metrics, {'features': out['features'][:batch]})


def update_extra(extra, params, batch_stats, hp, cfg, aux):
  """EMA of the key encoder; v2 also enqueues aux['keys'] ([B, D], the global batch)."""
  rate = momentum.target_momentum(hp, cfg)
  new = {**extra, 'target': momentum.update_target(extra['target'], params, batch_stats, rate)}
  if cfg.variant == 'v2':
    new['queue'], new['queue_ptr'] = enqueue(extra['queue'], aux['keys'], extra['queue_ptr'])
  return new
