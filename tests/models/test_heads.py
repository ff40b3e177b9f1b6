"""Tests for cxr_jax.models.heads: MLP maths, subtree names, transfer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import heads
from cxr_jax.models import resnet

EPS = 1e-5  # BatchNorm epsilon of the heads.


def _random_variables(module, *args, seed=0, **kwargs):
  """All variables of `module` filled with numpy random values.

  The structure comes from `jax.eval_shape(module.init, ...)`, so no init is
  compiled; BN scales and running variances are kept positive.
  """
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith(("'scale']", "'var']")):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = 0.5 * rng.standard_normal(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _np_dense(x, p):
  y = x @ np.asarray(p['kernel'], np.float64)
  return y + np.asarray(p['bias'], np.float64) if 'bias' in p else y


def _np_bn(x, p, stats, train):
  """BatchNorm written from its definition (biased batch variance)."""
  if train:
    mean, var = x.mean(axis=0), x.var(axis=0)
  else:
    mean, var = (np.asarray(stats['mean'], np.float64),
                 np.asarray(stats['var'], np.float64))
  return ((x - mean) / np.sqrt(var + EPS) * np.asarray(p['scale'], np.float64)
          + np.asarray(p['bias'], np.float64))


def _np_mlp(x, params, stats, num_layers, use_bn, train):
  x = np.asarray(x, np.float64)
  for i in range(num_layers - 1):
    x = _np_dense(x, params[f'dense{i}'])
    if use_bn:
      x = _np_bn(x, params[f'bn{i}'], stats[f'bn{i}'], train)
    x = np.maximum(x, 0.0)
  return _np_dense(x, params[f'dense{num_layers - 1}'])


@pytest.mark.parametrize('num_layers,use_bn',
                         [(3, True), (2, False), (1, True)])
def test_projection_mlp_matches_numpy(num_layers, use_bn):
  x = jax.random.normal(jax.random.key(1), (6, 12))
  mlp = heads.ProjectionMLP(hidden_dim=10, out_dim=4, num_layers=num_layers,
                            use_bn=use_bn)
  variables = _random_variables(mlp, x)
  params = variables['params']
  stats = variables.get('batch_stats', {})
  assert set(params) == ({f'dense{i}' for i in range(num_layers)} |
                         ({f'bn{i}' for i in range(num_layers - 1)}
                          if use_bn else set()))
  # SimCLR v2: no bias before BN; the last layer always has one.
  assert ('bias' in params['dense0']) == (not use_bn or num_layers == 1)
  assert 'bias' in params[f'dense{num_layers - 1}']

  for train in (False, True):
    out, _ = mlp.apply(variables, x, train=train, mutable=['batch_stats'])
    assert out.shape == (6, 4)
    np.testing.assert_allclose(
        out, _np_mlp(x, params, stats, num_layers, use_bn, train),
        rtol=1e-4, atol=1e-4)


def test_predictor_matches_numpy():
  x = jax.random.normal(jax.random.key(2), (5, 4))
  predictor = heads.Predictor(hidden_dim=9, out_dim=4)
  variables = _random_variables(predictor, x)
  assert set(variables['params']) == {'dense0', 'bn0', 'dense1'}
  for train in (False, True):
    out, _ = predictor.apply(variables, x, train=train,
                             mutable=['batch_stats'])
    np.testing.assert_allclose(
        out, _np_mlp(x, variables['params'], variables['batch_stats'], 2,
                     True, train), rtol=1e-4, atol=1e-4)


def _encoder():
  return resnet.resnet18(width=0.125, stem='small')


def test_ssl_model_subtrees_and_outputs():
  x = jnp.zeros((2, 32, 32, 1))
  byol = heads.SSLModel(_encoder(), heads.ProjectionMLP(16, 8),
                        heads.Predictor(16, 8))
  simclr = heads.SSLModel(_encoder(), heads.ProjectionMLP(16, 8))
  for model, names in ((byol, {'encoder', 'projector', 'predictor'}),
                       (simclr, {'encoder', 'projector'})):
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert set(variables['params']) == names
    assert set(variables['batch_stats']) == names
    out, updates = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, mutable=['batch_stats']),
        variables)
    assert set(updates['batch_stats']) == names
    expected = {'features': (2, 64), 'projection': (2, 8)}
    if 'predictor' in names:
      expected['prediction'] = (2, 8)
    assert {k: v.shape for k, v in out.items()} == expected


def test_classifier_rejects_encoder_with_head():
  model = heads.ClassifierModel(resnet.resnet18(num_classes=3), num_classes=4)
  with pytest.raises(ValueError, match='num_classes=None'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_encoder_transfers_from_ssl_to_classifier():
  x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 1))
  ssl = heads.SSLModel(_encoder(), heads.ProjectionMLP(16, 8))
  classifier = heads.ClassifierModel(_encoder(), num_classes=3)
  ssl_vars = _random_variables(ssl, x)
  cls_shapes = jax.eval_shape(classifier.init, jax.random.key(0), x)
  assert set(cls_shapes['params']) == {'encoder', 'head'}
  assert set(cls_shapes['batch_stats']) == {'encoder'}

  # What fine-tuning does: copy the pretrained encoder, keep a fresh head.
  rng = np.random.default_rng(1)
  head = {'kernel': jnp.asarray(rng.standard_normal((64, 3)), jnp.float32),
          'bias': jnp.asarray(rng.standard_normal(3), jnp.float32)}
  cls_vars = {
      'params': {'encoder': ssl_vars['params']['encoder'], 'head': head},
      'batch_stats': {'encoder': ssl_vars['batch_stats']['encoder']},
  }
  assert (jax.tree.structure(cls_vars) == jax.tree.structure(cls_shapes))
  assert (jax.tree.map(jnp.shape, cls_vars) ==
          jax.tree.map(jnp.shape, cls_shapes))

  @jax.jit
  def run(ssl_vars, cls_vars, x):
    ssl_out = ssl.apply(ssl_vars, x)
    logits = classifier.apply(cls_vars, x)
    fmap = classifier.apply(cls_vars, x, method='feature_map')
    logits_from_fmap = classifier.apply(cls_vars, fmap,
                                        method='logits_from_feature_map')
    return ssl_out['features'], logits, fmap, logits_from_fmap

  features, logits, fmap, logits_from_fmap = run(ssl_vars, cls_vars, x)
  assert fmap.shape == (2, 4, 4, 64) and logits.shape == (2, 3)
  # The same encoder weights give the same features in both models ...
  np.testing.assert_allclose(np.asarray(fmap).mean(axis=(1, 2)), features,
                             rtol=1e-5, atol=1e-5)
  # ... the classifier is a linear head on them ...
  np.testing.assert_allclose(
      logits, np.asarray(features) @ np.asarray(head['kernel']) +
      np.asarray(head['bias']), rtol=1e-4, atol=1e-4)
  # ... and Grad-CAM's split (map, then pool + head) composes to the logits.
  np.testing.assert_allclose(logits_from_fmap, logits, rtol=1e-5, atol=1e-5)


def test_an_earlier_stage_split_composes_to_the_same_logits():
  """Grad-CAM on stage k: map after stage k, then stages k+1.. + pool + head = logits."""
  x = jax.random.uniform(jax.random.key(4), (2, 32, 32, 1))
  classifier = heads.ClassifierModel(_encoder(), num_classes=3)
  variables = _random_variables(classifier, x)

  @jax.jit
  def run(v, x):
    logits = classifier.apply(v, x)
    out = {}
    for stage in (1, 2, 3, 4):
      fmap = classifier.apply(v, x, stage=stage, method='feature_map')
      out[stage] = (fmap.shape, classifier.apply(v, fmap, stage=stage,
                                                 method='logits_from_feature_map'))
    return logits, out

  logits, out = run(variables, x)
  # 32 px, small stem (no downsampling): 32x32 after stage 1, halved by each later stage
  assert [out[k][0][1] for k in (1, 2, 3, 4)] == [32, 16, 8, 4]
  for stage in (1, 2, 3, 4):
    np.testing.assert_allclose(out[stage][1], logits, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='stages run from 1 to 4'):
    classifier.apply(variables, x, stage=5, method='feature_map')
