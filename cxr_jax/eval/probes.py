"""Probes of frozen features: weighted kNN and a logistic-regression (linear) probe.

Both are pure jax.numpy and jit-friendly, so the pretraining loop can run them as online
monitors (`monitor/knn_acc`, `monitor/linear_acc`, their AUROCs) and the evaluation job as
the linear and kNN protocols of the study.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The weighted kNN's neighbours and vote temperature (Wu et al. 2018; solo-learn's
# defaults), used by the pretraining monitors and the 'knn' protocol alike.
KNN_K = 20
KNN_TEMPERATURE = 0.07


def masked_sigmoid_bce(logits, targets):
  """Mean binary cross-entropy over the observed entries of multi-label targets.

  Each finding is its own sigmoid (optax.sigmoid_binary_cross_entropy); NaN targets (not
  observed, e.g. CheXpert's uncertain labels under U-Ignore) contribute nothing, and the
  mean is over the observed entries only (0 when there is none).

  Args:
    logits: [B, F].
    targets: [B, F] in {0, 1} or NaN.

  Returns:
    The scalar loss.
  """
  observed = ~jnp.isnan(targets)
  per_entry = optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), jnp.where(observed, targets, 0.0))
  return jnp.sum(jnp.where(observed, per_entry, 0.0)) / jnp.maximum(jnp.sum(observed), 1)


def _l2_normalize(x, eps=1e-12):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


@functools.partial(jax.jit, static_argnames=('num_classes', 'k', 'chunk_size'))
def knn_predict(train_feats, train_labels, query_feats, num_classes: int, k: int = KNN_K,
                temperature: float = KNN_TEMPERATURE, chunk_size: int = 256):
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


@functools.partial(jax.jit, static_argnames=('k', 'chunk_size'))
def knn_predict_multilabel(train_feats, train_targets, query_feats, k: int = KNN_K,
                           temperature: float = KNN_TEMPERATURE, chunk_size: int = 256):
  """Per-finding probabilities as neighbour-averaged targets (the multi-label `knn_predict`).

  The k most cosine-similar training examples weigh exp(sim / T) as in `knn_predict`; a
  finding's probability is the weighted mean of their observed targets for it (NaN
  targets are left out of that finding's mean; 0.5 when none of the k observed it).

  Args:
    train_feats: [N, D]; train_targets: [N, F] in {0, 1} or NaN; query_feats: [M, D].

  Returns:
    probs: [M, F] float32.
  """
  k = min(k, train_feats.shape[0])
  bank = _l2_normalize(train_feats.astype(jnp.float32))
  targets = train_targets.astype(jnp.float32)
  observed = (~jnp.isnan(targets)).astype(jnp.float32)
  targets = jnp.where(observed > 0, targets, 0.0)

  def one_query(q):
    sim = bank @ _l2_normalize(q.astype(jnp.float32))
    top_sim, top_idx = jax.lax.top_k(sim, k)
    w = jnp.exp((top_sim - top_sim[0]) / temperature)
    num, den = w @ targets[top_idx], w @ observed[top_idx]  # [F]
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.5)

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

  Multi-label targets: train_labels float [N, F] (1 / 0 / NaN) fit one logistic head per
  finding instead (num_classes = F; the mean of `masked_sigmoid_bce` replaces the
  cross-entropy, NaN targets left out); apply it with `linear_probe_predict(...,
  multilabel=True)`.

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
  multilabel = train_labels.ndim == 2  # static: the shape is known when tracing

  def loss(params):
    logits = x @ params['w'] + params['b']
    if multilabel:
      ce = masked_sigmoid_bce(logits, train_labels)
    else:
      onehot = jax.nn.one_hot(train_labels, num_classes, dtype=jnp.float32)
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


@functools.partial(jax.jit, static_argnames=('multilabel',))
def linear_probe_predict(probe: LinearProbe, feats, multilabel: bool = False):
  """Class probabilities of a fitted probe (per-finding sigmoids with `multilabel`).

  Args:
    probe: from `linear_probe_fit`.
    feats: [M, D] features.
    multilabel: the probe was fit on multi-label targets.

  Returns:
    probs: [M, K].
  """
  x = (feats.astype(jnp.float32) - probe.mean) / probe.scale
  logits = x @ probe.w + probe.b
  return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)


def frozen_probe_probs(kind: str, bank, bank_labels, queries, num_classes: int,
                       multilabel: bool = False) -> list[np.ndarray]:
  """Class probabilities of each query set by a probe on frozen features: 'knn' (weighted
  kNN, `KNN_K` neighbours at `KNN_TEMPERATURE`; multi-label: neighbour-averaged targets)
  or 'linear' (one logistic-regression probe fit on the bank: softmax, or one sigmoid per
  finding when multi-label).

  Args:
    kind: 'knn' | 'linear'.
    bank: [N, D] features of the labelled examples; bank_labels: [N] int, or [N, F] in
      {0, 1} / NaN when multilabel.
    queries: a sequence of [M, D] feature arrays.
    num_classes: K (multi-label: F).

  Returns:
    one float32 numpy array [M, K] per query set.
  """
  if kind == 'knn' and multilabel:
    return [np.asarray(knn_predict_multilabel(bank, bank_labels, q)) for q in queries]
  if kind == 'knn':
    return [np.asarray(knn_predict(bank, bank_labels, q, num_classes)) for q in queries]
  if kind != 'linear':
    raise ValueError(f"probe kind {kind!r}: 'knn' or 'linear'")
  probe = linear_probe_fit(bank, bank_labels, num_classes)
  return [np.asarray(linear_probe_predict(probe, q, multilabel=multilabel)) for q in queries]
