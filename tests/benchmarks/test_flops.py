"""benchmarks/flops.py against hand counts, the textbook ResNet-50 count and XLA's CPU
cost analysis of the same function."""
import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from cxr_jax.models import build_encoder


def _conv_dot(x, w, w2):
  """A stride-2 convolution (2x2 kernel, VALID: no padding, no overlap), then a dense."""
  y = jax.lax.conv_general_dilated(x, w, (2, 2), 'VALID',
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y.reshape(y.shape[0], -1) @ w2


def test_forward_count_is_the_hand_count_and_the_cpu_cost_analysis():
  x, w, w2 = jnp.ones((2, 16, 16, 3)), jnp.ones((2, 2, 3, 8)), jnp.ones((8 * 8 * 8, 10))
  # conv: 2 images x 8x8 outputs x 8 filters x (2x2x3) taps; dense: 2 x 512 x 10
  hand = 2 * (2 * 8 * 8 * 8 * 12) + 2 * (2 * 512 * 10)
  assert flops.count(_conv_dot, x, w, w2) == hand
  assert jax.jit(_conv_dot).lower(x, w, w2).cost_analysis()['flops'] == hand


def test_a_training_step_counts_three_forward_passes():
  """Input and weight gradients each cost one forward pass: the input gradient of a
  strided convolution is counted without the zeros its dilation inserts."""
  x, w, w2 = jnp.ones((2, 16, 16, 3)), jnp.ones((2, 2, 3, 8)), jnp.ones((8 * 8 * 8, 10))
  forward = flops.count(_conv_dot, x, w, w2)
  step = jax.value_and_grad(lambda x, w, w2: _conv_dot(x, w, w2).sum(), argnums=(0, 1, 2))
  assert flops.count(step, x, w, w2) == 3 * forward


def test_flops_inside_jit_and_remat_are_counted():
  x, w, w2 = jnp.ones((2, 16, 16, 3)), jnp.ones((2, 2, 3, 8)), jnp.ones((8 * 8 * 8, 10))
  assert flops.count(jax.jit(jax.checkpoint(_conv_dot)), x, w, w2) == flops.count(
      _conv_dot, x, w, w2)


def test_resnet50_forward_at_224_px_is_the_textbook_4_1_gmacs():
  """torchvision's count for ResNet-50 at 224 px, 3 channels: 4.09 GMACs (its 1000-class
  layer, 2 M MACs, is not part of our encoder). Traced with shapes only."""
  enc = build_encoder('resnet50', width=1.0, stem='imagenet')
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                              train=False))
  forward = lambda v, x: enc.apply(v, x, train=False)
  count = flops.count(forward, variables, x)
  assert count / 2 == pytest.approx(4.09e9 - 2.05e6, rel=0.005)
  # XLA's CPU count leaves out the taps that fall on padding and adds element-wise work
  assert count == pytest.approx(jax.jit(forward).lower(variables, x).cost_analysis()['flops'],
                                rel=0.05)
