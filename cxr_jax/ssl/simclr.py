"""SimCLR (Chen et al., ICML 2020; v2 projector: Chen et al., NeurIPS 2020).

Two augmented views of each image go through the encoder and a projection MLP; NT-Xent
pulls the two projections of an image together and pushes them away from the other
2B - 2 projections of the global batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cxr_jax.ssl import common

DEFAULTS = ml_collections.ConfigDict(dict(
    proj_hidden_dim=512,  # width of the projector's hidden layers
    proj_dim=128,         # dimension of the projection z the loss sees
    proj_layers=3,        # SimCLR v2 uses a 3-layer projector
    optimizer=ml_collections.ConfigDict(),  # overrides of config.pretrain.optimizer
))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """NT-Xent over 2B anchors (SimCLR eq. 1), mean over anchors.

  Args:
    z1, z2: [B, D] projections of the two views; row i of z1 and of z2 come from the same
      image (the positive pair). Every other row of either view is a negative.
    temperature: the softmax temperature tau.
  Returns:
    scalar loss: mean over the 2B anchors of
      -log exp(sim(a, pos)/tau) / sum_{k != a} exp(sim(a, k)/tau), sim = cosine.
  """
  z = common.l2_normalize(jnp.concatenate([z1, z2], axis=0))
  n = z.shape[0]
  batch = n // 2
  logits = (z @ z.T) / temperature
  logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf, logits)  # an anchor is not its own negative
  positives = jnp.concatenate([jnp.arange(batch, n), jnp.arange(0, batch)])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, positives))


build_model = common.projector_model
init_extra = common.no_extra
update_extra = common.keep_extra


def loss_fn(model, params, batch_stats, extra, inputs, hp, cfg):
  view1, view2 = inputs['view1'], inputs['view2']
  del extra, cfg
  return common.two_view_loss(model, params, batch_stats, view1, view2,
                              lambda z1, z2: (nt_xent(z1, z2, hp['temperature']), {}))

