"""DenseNet-121/169: torchvision's parameter counts, stages as the ResNet's, ImageNet import.

Full-depth DenseNets take a minute or more to compile on the 2-core CPU, so everything that
runs a network uses shallow DenseNets (fewer layers per block, tiny growth rate) built by
the same class; depth is checked by shapes only (jax.eval_shape, no compilation). The
ImageNet import is checked against a reference forward pass written here from the torch
key names alone (jax.lax in torch's NCHW/OIHW layout), and against torch.nn.functional
when torch is installed.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxr_jax.models import build_encoder
from cxr_jax.models import convert
from cxr_jax.models import densenet_convert
from cxr_jax.models import resnet_convert
from cxr_jax.models import ENCODERS
from cxr_jax.models import heads
from cxr_jax.models.densenet import DenseNet


def _count(arch, in_channels=3, num_classes=1000):
  shapes = convert.flax_shapes(arch, in_channels, num_classes)
  return sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(
      shapes['params'], is_leaf=lambda x: isinstance(x, tuple)))


def test_parameter_counts_and_torch_keys_match_torchvision():
  # torchvision.models.densenet121() / densenet169(): sum(p.numel() for p in parameters())
  assert _count('densenet121') == 7_978_856
  assert _count('densenet169') == 14_149_480
  keys = convert.torch_key_shapes('densenet121')
  assert keys['features.conv0.weight'] == (64, 3, 7, 7)
  assert keys['features.denseblock1.denselayer1.norm1.running_var'] == (64,)
  assert keys['features.denseblock4.denselayer16.conv2.weight'] == (32, 128, 3, 3)
  assert keys['features.transition3.conv.weight'] == (512, 1024, 1, 1)
  assert keys['features.norm5.weight'] == (1024,)
  assert keys['classifier.weight'] == (1000, 1024)
  assert build_encoder('densenet121').num_features == 1024
  assert build_encoder('densenet169').num_features == 1664
  assert {'densenet121', 'densenet169'} <= set(ENCODERS)


_SHALLOW = dict(stage_sizes=(2, 1, 2, 1), growth_rate=4, num_init_features=8)


def _random_bn_stats(variables, seed):
  """Random BN statistics (the defaults, mean 0 / var 1, would not test their mapping)."""
  rng = np.random.default_rng(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda p, v: (rng.uniform(0.5, 1.5, v.shape) if p[-1].key == 'var'
                    else rng.normal(0, 0.2, v.shape)).astype(np.float32),
      variables['batch_stats'])
  return {'params': variables['params'], 'batch_stats': stats}


def test_stages_compose_and_match_the_forward_pass():
  """feature_map(.., last_stage=k) then (.., first_stage=k+1) is the network; the last
  stage's map is ReLU(norm5) at H/8 with the small stem; ClassifierModel's stage= path."""
  enc = DenseNet(**_SHALLOW, stem='small')
  model = heads.ClassifierModel(enc, 3)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 1)), jnp.float32)
  v = _random_bn_stats(model.init(jax.random.key(0), x, train=False), 1)
  logits = model.apply(v, x)
  full = model.apply(v, x, method=model.feature_map)
  assert full.shape == (2, 4, 4, enc.num_features) and float(full.min()) >= 0.0
  for stage, side in ((2, 16), (3, 8)):
    fmap = model.apply(v, x, stage=stage, method=model.feature_map)
    assert fmap.shape[1:3] == (side, side)
    np.testing.assert_allclose(
        model.apply(v, fmap, stage=stage, method=model.logits_from_feature_map), logits,
        rtol=1e-4, atol=1e-5)
  # train-mode forward runs and updates every BN's statistics
  _, upd = model.apply(v, x, train=True, mutable=['batch_stats'])
  assert jax.tree_util.tree_structure(upd['batch_stats']) == jax.tree_util.tree_structure(
      v['batch_stats'])
  with pytest.raises(ValueError, match='stages run from 1 to 4'):
    enc.apply({'params': v['params']['encoder'], 'batch_stats': v['batch_stats']['encoder']},
              x, last_stage=5, method=enc.feature_map)


# ---- the reference forward pass, from torch key names alone (NCHW, OIHW) ----

def _ref_forward(sd, x_nchw, ops):
  conv, bn, relu, max_pool, avg_pool = ops
  x = conv(x_nchw, sd['features.conv0.weight'], 2, 3)
  x = max_pool(relu(bn(x, sd, 'features.norm0')))
  i = 1
  while f'features.denseblock{i}.denselayer1.conv1.weight' in sd:
    j = 1
    while (p := f'features.denseblock{i}.denselayer{j}') + '.conv1.weight' in sd:
      y = conv(relu(bn(x, sd, p + '.norm1')), sd[p + '.conv1.weight'], 1, 0)
      y = conv(relu(bn(y, sd, p + '.norm2')), sd[p + '.conv2.weight'], 1, 1)
      x = ops.concat(x, y)
      j += 1
    t = f'features.transition{i}'
    if t + '.conv.weight' in sd:
      x = avg_pool(conv(relu(bn(x, sd, t + '.norm')), sd[t + '.conv.weight'], 1, 0))
    i += 1
  x = relu(bn(x, sd, 'features.norm5'))
  return x.mean(axis=(2, 3))


class _LaxOps(tuple):

  def __new__(cls):
    def conv(x, w, stride, pad):
      return jax.lax.conv_general_dilated(x, jnp.asarray(w), (stride, stride),
                                          ((pad, pad), (pad, pad)),
                                          dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
                                          precision='highest')

    def bn(x, sd, name):
      c = lambda k: jnp.asarray(sd[f'{name}.{k}'])[None, :, None, None]
      return (x - c('running_mean')) / jnp.sqrt(c('running_var') + 1e-5) * c('weight') + c('bias')

    def max_pool(x):
      return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                                   ((0, 0), (0, 0), (1, 1), (1, 1)))

    def avg_pool(x):
      return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, 2, 2), (1, 1, 2, 2),
                                   'VALID') / 4.0
    return super().__new__(cls, (conv, bn, jax.nn.relu, max_pool, avg_pool))

  @staticmethod
  def concat(a, b):
    return jnp.concatenate([a, b], axis=1)


def _shallow_densenet121(monkeypatch):
  """'densenet121' names a shallow DenseNet (same key layout, a few layers) for this test."""
  monkeypatch.setitem(ENCODERS, 'densenet121', functools.partial(DenseNet, **_SHALLOW))


def _state_dict(seed):
  rng = np.random.default_rng(seed)
  sd = {}
  for k, s in convert.torch_key_shapes('densenet121', 3).items():
    if k.endswith('running_var'):
      sd[k] = rng.uniform(0.5, 1.5, s)
    elif k.endswith(('norm0.weight', 'norm1.weight', 'norm2.weight', 'norm.weight',
                     'norm5.weight')):
      sd[k] = rng.uniform(0.5, 1.5, s)
    elif k.endswith('weight') and len(s) == 4:
      sd[k] = rng.normal(0, np.sqrt(2.0 / np.prod(s[1:])), s)
    else:
      sd[k] = rng.normal(0, 0.1, s)
  return {k: v.astype(np.float32) for k, v in sd.items()}


def _ours(variables, x_nhwc):
  model = build_encoder('densenet121', width=1.0, stem='imagenet')
  return np.asarray(model.apply(variables, jnp.asarray(x_nhwc), train=False))


def _assert_close(ours, ref):
  scale = float(np.max(np.abs(ref)))
  assert scale > 1e-3
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)


def test_imported_weights_match_a_reference_forward(monkeypatch):
  """Gray image through the folded 1-channel conv0 == the reference on the RGB replica;
  old torchvision key names ('norm.1') convert to the same variables; the tree is ours."""
  _shallow_densenet121(monkeypatch)
  sd = _state_dict(0)
  gray = np.random.default_rng(1).uniform(size=(2, 32, 32, 1)).astype(np.float32)
  rgb = np.repeat(gray.transpose(0, 3, 1, 2), 3, axis=1)
  ref = np.asarray(_ref_forward(sd, jnp.asarray(rgb), _LaxOps()))
  v = convert.convert_state_dict(sd, 'densenet121', in_channels=1, normalize=None)
  assert v['params']['conv0']['kernel'].shape == (7, 7, 1, 8)
  assert 'head' not in v['params']
  _assert_close(_ours(v, gray), ref)
  np.testing.assert_array_equal(v['batch_stats']['denseblock3_denselayer2']['norm2']['var'],
                                sd['features.denseblock3.denselayer2.norm2.running_var'])
  np.testing.assert_array_equal(v['params']['transition1']['conv']['kernel'][0, 0],
                                sd['features.transition1.conv.weight'][:, :, 0, 0].T)

  old = {('module.' + k.replace('norm1.', 'norm.1.').replace('conv2.', 'conv.2.')
          if 'denselayer' in k else 'module.' + k): val for k, val in sd.items()}
  old['module.features.denseblock1.denselayer1.norm.1.num_batches_tracked'] = np.array(3)
  v_old = convert.convert_state_dict(old, 'densenet121', in_channels=1, normalize=None)
  jax.tree_util.tree_map(np.testing.assert_array_equal, v_old, v)

  # the normalisation fold and the head: ours on [0, 1] == reference on normalised input,
  # away from the border; here just check they run and the head maps one to one
  with_head = convert.convert_state_dict(sd, 'densenet121', in_channels=3,
                                           include_head=True)
  np.testing.assert_array_equal(with_head['params']['head']['kernel'], sd['classifier.weight'].T)

  fresh = build_encoder('densenet121', width=1.0, stem='imagenet').init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
  same = jax.tree_util.tree_map(lambda a, b: np.shape(a) == np.shape(b), dict(fresh), v)
  assert all(jax.tree_util.tree_leaves(same))


def test_imported_weights_match_torch(monkeypatch):
  torch = pytest.importorskip('torch')
  F = torch.nn.functional
  _shallow_densenet121(monkeypatch)
  sd = _state_dict(2)
  rgb = np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  t = {k: torch.from_numpy(v) for k, v in sd.items()}

  class Ops(tuple):
    concat = staticmethod(lambda a, b: torch.cat([a, b], dim=1))

  ops = Ops((lambda x, w, s, p: F.conv2d(x, w, stride=s, padding=p),
             lambda x, d, n: F.batch_norm(x, d[n + '.running_mean'], d[n + '.running_var'],
                                          d[n + '.weight'], d[n + '.bias'], False, 0.0, 1e-5),
             torch.relu, lambda x: F.max_pool2d(x, 3, 2, 1), lambda x: F.avg_pool2d(x, 2, 2)))
  with torch.no_grad():
    ref = _ref_forward(t, torch.from_numpy(rgb.transpose(0, 3, 1, 2)), ops).numpy()
  v = convert.convert_state_dict(sd, 'densenet121', in_channels=3, normalize=None)
  _assert_close(_ours(v, rgb), ref)


def test_wrong_family_is_named():
  sd = {'features.conv0.weight': np.zeros((64, 3, 7, 7), np.float32)}
  with pytest.raises(ValueError, match='looks like a densenet checkpoint'):
    convert.convert_state_dict(sd, 'resnet18')
  with pytest.raises(ValueError, match='no key features.conv0.weight.*looks like a resnet'):
    convert.convert_state_dict({'conv1.weight': np.zeros((64, 3, 7, 7))}, 'densenet121')
  # each family's own converter takes only its own archs
  with pytest.raises(ValueError, match="'densenet121' is not a ResNet"):
    resnet_convert.convert_torch_resnet(sd, 'densenet121')
  with pytest.raises(ValueError, match="'resnet18' is not a DenseNet"):
    densenet_convert.convert_torch_densenet(sd, 'resnet18')


def test_a_densenet_run_pretrains_finetunes_explains_and_reports(tmp_path, tiny_data_dir,
                                                                 monkeypatch):
  """config.model.name='densenet121' through experiment.run: SimCLR pretraining, fine-tuning
  from the curricular encoder, Grad-CAM with lung masks, report. 'densenet121' is bound to a
  one-layer-per-block DenseNet here: the full depth compiles for minutes on 2 CPU cores
  (its depth is checked by test_parameter_counts_and_torch_keys_match_torchvision)."""
  from cxr_jax import experiment
  from tests.test_experiment import tiny_config
  monkeypatch.setitem(ENCODERS, 'densenet121',
                      functools.partial(DenseNet, stage_sizes=(1, 1, 1, 1)))
  config = tiny_config(tiny_data_dir)
  config.model.name, config.model.stem = 'densenet121', 'small'  # 32 px: a 4x4 last map
  config.pretrain.stages = config.pretrain.stages[:1]
  config.pretrain.stages[0].steps = 2
  config.finetune.inits, config.finetune.num_seeds = 'curricular', 1
  config.finetune.protocols = 'finetune'
  config.finetune.steps, config.finetune.eval_every, config.finetune.batch_size = 2, 2, 8
  config.finetune.image_size, config.eval_batch_size = 32, 16
  config.explain.enabled, config.explain.num_overlays = True, 1
  results = experiment.run(config, tmp_path)
  assert len(results) == 1 and all(0.0 <= r['test']['auroc'] <= 1.0 for r in results)
  cell = tmp_path / 'finetune' / 'curricular' / '1' / 'seed0'
  with np.load(cell / 'attention.npz') as f:
    # explain.stage='auto': the last map of at least 8x8 (block 3 at 32 px, small stem)
    assert list(f['cam_resolution']) == [8, 8]
    assert f['overlay_cam_pred'].shape[1:] == (32, 32)
    assert np.isfinite(f['lung_share_pred']).any()
  assert '| curricular | 1 | 1 |' in (tmp_path / 'report.md').read_text()
