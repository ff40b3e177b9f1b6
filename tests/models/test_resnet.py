"""Tests for cxr_jax.models.resnet: sizes, BatchNorm, init, small-map path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from cxr_jax.models import layers
from cxr_jax.models import registry
from cxr_jax.models import resnet

# torchvision.models.resnet{18,34,50}(): sum(p.numel() for p in parameters()).
TORCHVISION_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
}


def _init_key(seed: int = 0) -> jax.Array:
  """A key for real inits: XLA's RngBitGenerator compiles in a fraction of
  the time threefry takes on CPU (a ResNet-18 init: ~7 s against ~45 s)."""
  return jax.random.key(seed, impl='rbg')


def _num_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


@pytest.mark.parametrize('name', sorted(TORCHVISION_PARAMS))
def test_param_count_matches_torchvision(name):
  model = registry.build_encoder(name, num_classes=1000)
  # eval_shape traces init without running it; the count does not depend on
  # the spatial size.
  variables = jax.eval_shape(model.init, jax.random.key(0),
                             jnp.zeros((1, 64, 64, 3)))
  assert _num_params(variables['params']) == TORCHVISION_PARAMS[name]


def test_build_encoder_rejects_unknown_name():
  with pytest.raises(ValueError, match=r"'resnet101'.*resnet18.*resnet50"):
    registry.build_encoder('resnet101')


def test_bad_block_and_stem_are_named():
  x = jnp.zeros((1, 32, 32, 1))
  with pytest.raises(ValueError, match="'dense'.*basic"):
    jax.eval_shape(resnet.ResNet((1,), block_cls='dense').init,
                   jax.random.key(0), x)
  with pytest.raises(ValueError, match="'tiny'.*imagenet"):
    jax.eval_shape(resnet.resnet18(stem='tiny').init, jax.random.key(0), x)


def test_parameter_names_are_torchvision_mappable():
  model = resnet.resnet50(num_classes=10, width=0.125)
  params = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, 64, 64, 3)))['params']
  stage_blocks = [k for k in params if k.startswith('stage')]
  assert len(stage_blocks) == 3 + 4 + 6 + 3
  assert {'conv_init', 'bn_init', 'head', 'stage4_block2'} <= set(params)
  assert set(params['stage2_block0']) == {
      'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'proj_conv', 'proj_bn'}
  assert 'proj_conv' not in params['stage2_block1']
  # v1.5: the stride is on the 3x3 conv; its kernel is 3x3.
  assert params['stage2_block0']['conv2']['kernel'].shape == (3, 3, 16, 16)
  assert params['conv_init']['kernel'].shape == (7, 7, 3, 8)


@pytest.mark.parametrize('name,channels', [('resnet18', 64),
                                           ('resnet34', 64),
                                           ('resnet50', 256)])
def test_output_shapes_small_stem_one_channel(name, channels):
  x = jnp.zeros((2, 32, 32, 1))
  encoder = registry.build_encoder(name, width=0.125, stem='small')
  variables = jax.eval_shape(encoder.init, jax.random.key(0), x)
  assert variables['params']['conv_init']['kernel'].shape == (3, 3, 1, 8)
  features = jax.eval_shape(
      lambda v: encoder.apply(v, x, train=False), variables)
  fmap = jax.eval_shape(
      lambda v: encoder.apply(v, x, method='feature_map'), variables)
  assert features.shape == (2, channels) == (2, encoder.num_features)
  # Small stem: /1, then stages 2-4 halve the map: 32 -> 4.
  assert fmap.shape == (2, 4, 4, channels)

  classifier = registry.build_encoder(name, width=0.125, stem='small',
                                    num_classes=5)
  variables = jax.eval_shape(classifier.init, jax.random.key(0), x)
  logits = jax.eval_shape(
      lambda v: classifier.apply(v, x, train=False), variables)
  assert logits.shape == (2, 5)


def test_bfloat16_compute_keeps_float32_params():
  model = resnet.resnet18(width=0.125, stem='small', dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 1))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  out = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert out.dtype == jnp.bfloat16


@pytest.fixture(scope='module')
def small_resnet18():
  """A real (initialised) 1-channel ResNet-18 on 32 px, and its batch."""
  model = resnet.resnet18(width=0.125, stem='small')
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 1))
  variables = jax.jit(model.init)(_init_key(), x)
  return model, variables, x


def test_forward_matches_declared_shapes(small_resnet18):
  model, variables, x = small_resnet18
  features = jax.jit(model.apply)(variables, x)
  assert features.shape == (4, 64)
  assert np.all(np.isfinite(features))


def test_batch_stats_update_in_train_mode_only(small_resnet18):
  model, variables, x = small_resnet18
  train_apply = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False))

  _, updates = train_apply(variables, x)
  old, new = variables['batch_stats'], updates['batch_stats']
  # Independent check of the stem BN update: running mean starts at 0 and
  # moves by (1 - momentum) = 0.1 towards the batch mean of the conv output.
  conv = lax.conv_general_dilated(
      np.asarray(x), np.asarray(variables['params']['conv_init']['kernel']),
      (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  conv = np.asarray(conv, np.float64)
  np.testing.assert_allclose(new['bn_init']['mean'],
                             0.1 * conv.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['bn_init']['var'],
                             0.9 + 0.1 * conv.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), old, new)
  assert all(jax.tree.leaves(changed))

  # Eval mode: running statistics, so an example's output does not depend
  # on the rest of the batch, and nothing is updated.
  full = eval_apply(variables, x)
  one_at_a_time = np.concatenate(
      [eval_apply(variables, x[i:i + 1]) for i in range(x.shape[0])])
  np.testing.assert_allclose(full, one_at_a_time, rtol=1e-5, atol=1e-6)
  _, eval_updates = model.apply(variables, x[:1], train=False,
                                mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, eval_updates['batch_stats'],
               old)


def test_last_bn_scale_of_each_block_is_zero(small_resnet18):
  _, variables, _ = small_resnet18
  params = variables['params']
  blocks = [k for k in params if k.startswith('stage')]
  assert len(blocks) == 8
  for name in blocks:
    np.testing.assert_array_equal(params[name]['bn2']['scale'], 0.0)
    np.testing.assert_array_equal(params[name]['bn1']['scale'], 1.0)


@pytest.mark.parametrize('block_cls,features', [(resnet.BasicBlock, 8),
                                                (resnet.BottleneckBlock, 2)])
def test_block_is_identity_on_residual_branch_at_init(block_cls, features):
  # Input channels equal output channels (8), stride 1: no projection, so the
  # zero-initialised last BN leaves out = relu(x + 0), in both modes.
  x = jax.random.normal(jax.random.key(2), (2, 4, 4, 8))
  block = block_cls(features=features)
  variables = block.init(_init_key(), x, train=False)
  assert 'proj_conv' not in variables['params']
  for train in (False, True):
    out, _ = block.apply(variables, x, train=train, mutable=['batch_stats'])
    np.testing.assert_array_equal(out, np.maximum(np.asarray(x), 0.0))


def _reference_conv(x, kernel, strides=1):
  """Plain XLA 3x3 conv with torch padding 1."""
  return lax.conv_general_dilated(
      x, kernel, (strides, strides), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize('hw', [(1, 1), (2, 2), (1, 2)])
def test_small_map_conv_matches_xla_conv(hw):
  h, w = hw
  kx, kk, kc = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (3, h, w, 5))
  kernel = 0.3 * jax.random.normal(kk, (3, 3, 5, 7))
  cotangent = jax.random.normal(kc, (3, h, w, 7))
  conv = layers.Conv3x3(7, small_map_conv=True)
  params = jax.eval_shape(conv.init, jax.random.key(0), x)
  assert _shapes(params) == {'params': {'kernel': ((3, 3, 5, 7),
                                                   jnp.dtype('float32'))}}
  fast = lambda x, k: conv.apply({'params': {'kernel': k}}, x)
  # The fast path is taken: no convolution left in the computation.
  jaxpr = str(jax.make_jaxpr(fast)(x, kernel))
  assert 'conv_general_dilated' not in jaxpr and 'dot_general' in jaxpr

  # flax's own nn.Conv with 'SAME' padding (stride 1) reads the same kernel.
  flax_conv = nn.Conv(7, (3, 3), padding='SAME', use_bias=False,
                      precision=lax.Precision.HIGHEST)
  flax_same = lambda x, k: flax_conv.apply({'params': {'kernel': k}}, x)

  @jax.jit
  def outputs_and_grads(x, kernel):
    results = []
    for f in (fast, _reference_conv, flax_same):
      loss = lambda x, k, f=f: jnp.sum(f(x, k) * cotangent)
      results.append((f(x, kernel),) + jax.grad(loss, (0, 1))(x, kernel))
    return results

  got, *references = outputs_and_grads(x, kernel)
  for reference in references:
    for a, b in zip(got, reference):  # output, d/dx, d/dkernel
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('strides,size', [(1, 3), (2, 6), (2, 5)])  # outputs >= 3x3
def test_conv3x3_general_path_matches_torch_padding(strides, size):
  x = jax.random.normal(jax.random.key(4), (2, size, size, 3))
  conv = layers.Conv3x3(4, strides=strides)
  params = {'params': {'kernel': jax.random.normal(jax.random.key(6),
                                                   (3, 3, 3, 4))}}
  jaxpr = str(jax.make_jaxpr(conv.apply)(params, x))
  assert 'conv_general_dilated' in jaxpr
  torch_like = nn.Conv(4, (3, 3), strides=(strides, strides),
                       padding=((1, 1), (1, 1)), use_bias=False)
  ours, theirs = jax.jit(lambda p, x: (conv.apply(p, x),
                                       torch_like.apply(p, x)))(params, x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_small_map_flag_keeps_param_tree_and_outputs():
  # The imagenet stem on 32 px leaves 2x2 maps in stage 3 and 1x1 in stage 4,
  # where the fast path applies.
  x = jax.random.normal(jax.random.key(5), (2, 32, 32, 1))
  fast = resnet.resnet18(width=0.125, small_map_conv=True)
  slow = resnet.resnet18(width=0.125, small_map_conv=False)
  shapes_fast = jax.eval_shape(fast.init, jax.random.key(0), x)
  shapes_slow = jax.eval_shape(slow.init, jax.random.key(0), x)
  assert _shapes(shapes_fast) == _shapes(shapes_slow)
  assert jax.eval_shape(
      lambda v: fast.apply(v, x, method='feature_map'),
      shapes_fast).shape == (2, 1, 1, 64)

  # Random values for every variable (numpy: no init to compile), BN scales
  # away from zero so every conv reaches the output.
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.asarray(
          (rng.uniform(0.5, 1.5, v.shape) if jax.tree_util.keystr(path)
           .endswith(("'scale']", "'var']")) else
           0.3 * rng.standard_normal(v.shape)), v.dtype),
      shapes_fast)
  # Eval mode: with 1x1 maps and 2 examples, batch statistics would divide
  # by the spread of two numbers and amplify rounding far beyond float32
  # tolerance; the running averages keep the comparison well conditioned.
  out_fast = jax.jit(lambda v: fast.apply(v, x))(variables)
  out_slow = jax.jit(lambda v: slow.apply(v, x))(variables)
  np.testing.assert_allclose(out_fast, out_slow, rtol=1e-4, atol=1e-5)
