"""Probes of frozen features: weighted kNN and a logistic-regression (linear) probe.

Both are pure jax.numpy and jit-friendly, so the pretraining loop can run them as online
monitors (`monitor/knn_acc`, `monitor/linear_acc`) and the evaluation job as the linear and
kNN protocols of the study.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def _l2_normalize(x, eps=1e-12):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


@functools.partial(jax.jit, static_argnames=('num_classes', 'k', 'chunk_size'))
def knn_predict(train_feats, train_labels, query_feats, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk_size: int = 256):
  """Weighted kNN class probabilities on cosine similarity.

  As in Wu et al., "Unsupervised feature learning via non-parametric instance
  discrimination" (CVPR 2018) and solo-learn's `weighted_knn`: the k training examples most
  cosine-similar to a query vote for their class with weight exp(sim / T); the votes per
  class are normalised to sum to 1.

  Args:
    train_feats: [N, D] features of the labelled bank.
    train_labels: [N] int class indices in [0, num_classes).
    query_feats: [M, D] features to classify.
    num_classes: K.
    k: number of neighbours (clipped to N).
    temperature: T of the vote weights.
    chunk_size: queries per similarity block; memory is O(chunk_size * N).

  Returns:
    probs: [M, K] float32.
  """
  k = min(k, train_feats.shape[0])
  bank = _l2_normalize(train_feats.astype(jnp.float32))
  onehot = jax.nn.one_hot(train_labels, num_classes, dtype=jnp.float32)  # [N, K]

  def one_query(q):  # q: [D] -> [K]; lax.map batches chunk_size of these at a time
    sim = bank @ _l2_normalize(q.astype(jnp.float32))  # [N]
    top_sim, top_idx = jax.lax.top_k(sim, k)
    # exp((s - s_max) / T) has the same ratios as exp(s / T) and cannot overflow
    w = jnp.exp((top_sim - top_sim[0]) / temperature)
    votes = w @ onehot[top_idx]  # [K]
    return votes / jnp.sum(votes)

  return jax.lax.map(one_query, query_feats, batch_size=chunk_size)


class LinearProbe(NamedTuple):
  """A fitted logistic-regression probe (a pytree).

  Attributes:
    mean: [D] feature mean of the training set.
    scale: [D] feature standard deviation (1 where it was 0).
    w: [D, K] weights on standardised features.
    b: [K] biases.
  """
  mean: jax.Array
  scale: jax.Array
  w: jax.Array
  b: jax.Array


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def linear_probe_fit(train_feats, train_labels, num_classes: int, l2: float = 1e-4,
                     steps: int = 200, tol: float = 1e-6) -> LinearProbe:
  """Fits a multinomial logistic regression on frozen, standardised features.

  Minimises mean_i CE(softmax(W^T x_i + b), y_i) + (l2 / 2) ||W||^2 over the full batch
  with L-BFGS (optax, zoom line search); the bias is not penalised. This is the objective
  of scikit-learn's `LogisticRegression(C=C)` scaled by 1 / (C N), i.e. l2 = 1 / (C N).

  Args:
    train_feats: [N, D] features.
    train_labels: [N] int class indices in [0, num_classes).
    num_classes: K.
    l2: weight of the L2 penalty on W.
    steps: maximum number of L-BFGS iterations.
    tol: stop early once the gradient norm of the objective is below this.

  Returns:
    A `LinearProbe`; use `linear_probe_predict` to apply it.
  """
  x = train_feats.astype(jnp.float32)
  mean = jnp.mean(x, axis=0)
  std = jnp.std(x, axis=0)
  scale = jnp.where(std > 1e-6, std, 1.0)  # a constant feature carries no information
  x = (x - mean) / scale
  onehot = jax.nn.one_hot(train_labels, num_classes, dtype=jnp.float32)

  def loss(params):
    logits = x @ params['w'] + params['b']
    ce = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
    return ce + 0.5 * l2 * jnp.sum(params['w'] ** 2)

  params = {'w': jnp.zeros((x.shape[1], num_classes)), 'b': jnp.zeros((num_classes,))}
  opt = optax.lbfgs()
  # reuses the value and gradient the line search already computed at the new point
  value_and_grad = optax.value_and_grad_from_state(loss)

  def update(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  def step(carry, _):
    # once converged, stop: a line search on a zero gradient divides by ~0
    # (the state holds the value and gradient at the current params; value is inf before
    # the first step)
    state = carry[1]
    done = (jnp.isfinite(optax.tree.get(state, 'value'))
            & (optax.tree.norm(optax.tree.get(state, 'grad')) < tol))
    return jax.lax.cond(done, lambda c: c, update, carry), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return LinearProbe(mean=mean, scale=scale, w=params['w'], b=params['b'])


@jax.jit
def linear_probe_predict(probe: LinearProbe, feats):
  """Class probabilities of a fitted probe.

  Args:
    probe: from `linear_probe_fit`.
    feats: [M, D] features.

  Returns:
    probs: [M, K].
  """
  x = (feats.astype(jnp.float32) - probe.mean) / probe.scale
  return jax.nn.softmax(x @ probe.w + probe.b, axis=-1)
