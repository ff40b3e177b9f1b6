"""Shared pieces of the pretext-task tests: a tiny encoder (with the ResNets' feature_map /
pool interface, so the context encoder's decoder can use it), numpy cross-entropy, and a
check that a task's model and loss keep the method interface."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.data import augment
from cxr_jax.ssl import pretext

FEATURES = 6


class TinyEncoder(nn.Module):
  """Conv (stride 4) + BN + ReLU, then global average pooling: [B, S, S, C] -> [B, 6]."""
  @nn.compact
  def feature_map(self, x, train=False):
    x = nn.Conv(FEATURES, (3, 3), strides=(4, 4), name='conv')(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train, name='bn')(x))

  def pool(self, fmap):
    return jnp.mean(fmap, axis=(1, 2))

  def __call__(self, x, train=False):
    return self.pool(self.feature_map(x, train))


def images(batch=3, size=32, seed=0):
  """float32 images [B, S, S, 1] in [0, 1] with structure (a gradient plus noise)."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 1, size, dtype=np.float32)
  base = ramp[None, :, None, None] * ramp[None, None, :, None]
  return np.clip(base + 0.3 * rng.random((batch, size, size, 1)), 0, 1).astype(np.float32)


def resized(x, size):
  """The strength-0 view the tasks start from (`augment.augment` at s = 0 is exactly this)."""
  return np.asarray(augment.resize(x, size))


def numpy_cross_entropy(logits, labels):
  """Mean over rows of -log softmax(logits)[label], in float64."""
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return float(-np.mean(log_p[np.arange(len(labels)), np.asarray(labels)]))


def init(method, cfg, x):
  model = method.build_model(TinyEncoder(), cfg)
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), train=False)
  return model, variables['params'], variables['batch_stats']


def classifier_logits(model, params, batch_stats, inputs):
  """The classifier's training-mode logits of a pretext task's network inputs."""
  out = model.apply({'params': params, 'batch_stats': batch_stats}, inputs, train=True,
                    mutable=['batch_stats'], method=pretext.PretextClassifier.classify)[0]
  return out['logits']


def check_interface(method, cfg, model, params, batch_stats, inputs, batch):
  """loss_fn + update_extra as the train step uses them, under jit: a finite scalar loss
  equal to metrics['loss'], scalar metrics, aux['features'] [B, FEATURES], gradients for
  every parameter, batch stats of unchanged structure; whole images give 'features'."""
  extra = method.init_extra(params, batch_stats, cfg)
  hp = {'strength': jnp.float32(0.0), 'progress': jnp.float32(0.5)}

  def step(params):
    f = lambda p: method.loss_fn(model, p, batch_stats, extra, inputs, hp, cfg)
    (loss, (stats, metrics, aux)), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, stats, metrics, aux, grads, method.update_extra(extra, params, stats, hp, cfg, aux)

  loss, stats, metrics, aux, grads, new_extra = jax.jit(step)(params)
  assert np.isfinite(float(loss)) and float(metrics['loss']) == float(loss)
  assert all(jnp.ndim(v) == 0 for v in metrics.values())
  assert aux['features'].shape == (batch, FEATURES)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
  assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads['encoder']))
  assert jax.tree_util.tree_structure(stats) == jax.tree_util.tree_structure(batch_stats)
  assert new_extra == {}
  return loss
