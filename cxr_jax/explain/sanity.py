"""Sanity checks of attention maps: do they depend on what the model learned?

Adebayo et al., "Sanity Checks for Saliency Maps" (NeurIPS 2018): a saliency method that
explains a trained model must give clearly different maps once the model's weights are
randomised; maps that survive randomisation show the image (edges, intensity), not the
model. We randomise by re-initialisation (the model's own initialisers, a fresh key):

  'head'  the classification head only (the top of Adebayo's cascade: the map's class
          weights change, the features stay);
  'full'  every parameter and BatchNorm statistic (the end of the cascade).

Similarity is the per-image Spearman rank correlation of the two maps' pixels (Adebayo's
main measure; rank-based, so the maps' scales do not matter). A constant map (all zero:
e.g. a ReLU'd Grad-CAM with no positive evidence) has no ranks: its correlation is NaN.

`map_spearman` is also what compares Grad-CAM with occlusion maps of the same images.
"""
from __future__ import annotations

import jax
import numpy as np
from scipy import stats

RANDOMISATIONS = ('head', 'full')

# The test passes when the mean trained-vs-randomised correlation is below this (and its
# CI's upper end too): Adebayo et al. report rank correlations near 0 for methods that pass
# and near 1 for those that fail (guided backprop); 0.5 is half-way.
MAX_RANDOMISED_SPEARMAN = 0.5


def map_spearman(maps_a, maps_b) -> np.ndarray:
  """Spearman rank correlation of two maps of the same image, per image.

  Args:
    maps_a, maps_b: [N, H, W] (or [N, P]) maps.

  Returns:
    [N] float64 in [-1, 1]; NaN where either map is constant.
  """
  a = np.asarray(maps_a, np.float64)
  b = np.asarray(maps_b, np.float64)
  if a.shape != b.shape or a.ndim < 2:
    raise ValueError(f'maps must have the same shape [N, ...], got {a.shape} and {b.shape}')
  a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  out = np.full(len(a), np.nan)
  for i in range(len(a)):
    if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0:
      out[i] = stats.spearmanr(a[i], b[i]).statistic
  return out


def randomised_variables(model, variables, kind: str, seed: int, input_shape) -> dict:
  """A copy of `variables` with the `kind` part re-initialised (module docstring).

  Args:
    model: the flax module of `variables` (a `ClassifierModel`: its head is the params
      subtree 'head').
    variables: {'params': ..., 'batch_stats': ...}.
    kind: 'head' or 'full'.
    seed: key of the fresh initialisation.
    input_shape: [1, H, W, C] of an input (initialisation only traces shapes).

  Returns:
    variables of the same tree structure.
  """
  if kind not in RANDOMISATIONS:
    raise ValueError(f'randomisation {kind!r}: choose from {RANDOMISATIONS}')
  fresh = model.init(jax.random.PRNGKey(seed), np.zeros(input_shape, np.float32),
                     train=False)
  fresh = jax.device_get(fresh)
  if kind == 'full':
    return {k: fresh[k] for k in variables}
  return {**variables, 'params': _with_head(variables['params'], fresh['params'])}


def _with_head(params, fresh):
  """`params` with its 'head' subtree taken from `fresh`: at the top, or one wrapper
  level down (a `heads.FindingView` keeps the classifier under 'classifier')."""
  if 'head' in params:
    return {**params, 'head': fresh['head']}
  for key, sub in params.items():
    if isinstance(sub, dict) and 'head' in sub:
      return {**params, key: {**sub, 'head': fresh[key]['head']}}
  raise ValueError(f"randomisation 'head': the model's params have no 'head' subtree "
                   f'(it has {sorted(params)})')
