"""Model variables a run creates and carries: initialisation, encoder hand-over, copies.

Every carried weight is merged strictly (`cxr_jax.models.merge.merge_strict`): a missing
leaf or a shape mismatch is an error naming the leaf.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cxr_jax import platform
from cxr_jax.models.registry import build_encoder
from cxr_jax.models import convert
from cxr_jax.train import loop

_INIT_SIZE = 32  # ResNets and heads have the same parameters at every input size


def encoder_from_config(model_config):
  """The ResNet encoder of a config.model (dtype 'auto' resolved by `platform.compute_dtype`)."""
  m = model_config
  return build_encoder(m.name, width=m.width, stem=m.stem,
                       dtype=jnp.dtype(platform.compute_dtype(m.dtype)), remat=m.remat)


def init_key(seed: int) -> jax.Array:
  """A key for parameter initialisation only: the 'rbg' generator compiles a ResNet's init
  in seconds where the default threefry takes tens of seconds on CPU."""
  return jax.random.key(seed, impl='rbg')


@functools.lru_cache(maxsize=None)
def _jit_init(model):
  # one compilation per model config (flax modules hash by their config), not one per job
  return jax.jit(model.init, static_argnames='train')


def init_variables(model, rng: jax.Array, channels: int) -> dict:
  """{'params', 'batch_stats'} of `model` for `channels`-channel images."""
  dummy = jnp.zeros((2, _INIT_SIZE, _INIT_SIZE, channels), jnp.float32)
  return _jit_init(model)(rng, dummy, train=False)


def encoder_variables(state: loop.TrainState | None) -> dict | None:
  """The encoder of a trained state as {'params': {'encoder'}, 'batch_stats': {'encoder'}}."""
  if state is None:
    return None
  return {'params': {'encoder': state.params['encoder']},
          'batch_stats': {'encoder': state.batch_stats['encoder']}}


def with_encoder(variables: dict, encoder_vars: dict, what: str,
                 hint: str = '') -> tuple[dict, dict]:
  """(params, batch_stats) of `variables` with their 'encoder' subtrees replaced by those
  of `encoder_vars` (an `encoder_variables` dict), strictly."""
  inner = {c: encoder_vars[c]['encoder'] for c in ('params', 'batch_stats')}
  merged = convert.merge_into(variables, inner, what=what, hint=hint)
  return merged['params'], merged['batch_stats']


def load_imagenet_encoder(path: str, arch: str) -> dict:
  """A converted ImageNet ResNet (`python -m cxr_jax.cli.convert`) as an
  `encoder_variables` dict."""
  if not path:
    raise ValueError('config.finetune.imagenet_checkpoint is empty, but the run asks for '
                     'ImageNet weights; convert a torchvision/timm checkpoint with '
                     '`python -m cxr_jax.cli.convert` and give its path')
  enc = convert.load_encoder(path, arch=arch)
  return {'params': {'encoder': enc['params']}, 'batch_stats': {'encoder': enc['batch_stats']}}


def copy_tree(tree):
  """Distinct buffers (e.g. best-so-far weights while the live ones are donated).

  One compiled program per tree (as eager ops, each leaf shape compiled its own copy:
  39 programs in the demo)."""
  return _copy_tree(tree)


@jax.jit
def _copy_tree(tree):
  # a copy inside jit is a new output buffer (only donation lets XLA alias one)
  return jax.tree_util.tree_map(jnp.copy, tree)
