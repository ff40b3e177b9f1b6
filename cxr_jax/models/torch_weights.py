"""What converting any torchvision/timm checkpoint into our encoders shares, whatever the
model family: flax leaf names to torch's, kernel layouts, the input adaptations folded
into the first convolution (channels, ImageNet normalisation), the check of a state dict
against an architecture, and the conversion itself over a family's key mapping.

Each family's mapping sits beside the model (`resnet_convert.py`, `densenet_convert.py`:
a `Family` and its `convert_torch_<family>`); files, the family registry and the encoder
file format are `convert.py`'s; the command is `cxr_jax/cli/convert.py`. The algebra of
the two input adaptations, and the key tables, are in `convert.py`'s docstring.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models.registry import build_encoder
from cxr_jax.models.registry import ENCODERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {'imagenet': (IMAGENET_MEAN, IMAGENET_STD)}

# flax leaf -> torch parameter name (conv/dense 'kernel', BN 'scale'/'bias'/'mean'/'var')
_LEAF_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
               'var': 'running_var'}


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family's torch naming.

  name: 'ResNet' (for messages); conv, norm: torch keys of the first convolution's weight
  and of the norm after it (where the input adaptations are folded); head: the torch
  prefix of the classifier ('fc.'); torch_prefix: a flax module name (top level or
  nested) -> its torch module path; archs: the `ENCODERS` names of the family;
  rename: torch key -> the key the mapping expects (older checkpoints' names)."""
  name: str
  conv: str
  norm: str
  head: str
  torch_prefix: Callable[[str], str]
  archs: tuple[str, ...]
  rename: Callable[[str], str] = lambda key: key


def torch_key(family: Family, collection: str, path: tuple[str, ...]) -> str:
  """The torch state-dict key of one flax leaf of a `family` encoder.

  Args:
    family: the model family's naming.
    collection: 'params' or 'batch_stats'.
    path: the leaf's path inside the encoder's collection, e.g.
      ('stage2_block0', 'proj_bn', 'scale').

  Returns:
    e.g. 'layer2.0.downsample.1.weight', or for a DenseNet
    'features.denseblock1.denselayer2.norm1.running_var'.
  """
  *modules, leaf = path
  if leaf not in _LEAF_TORCH:
    raise ValueError(f'no torch name for flax {collection}/{"/".join(path)}')
  prefix = '.'.join(family.torch_prefix(m) for m in modules)
  return f'{prefix}.{_LEAF_TORCH[leaf]}'


def _flax_to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(shape) == 4:  # conv kernel [kh, kw, I, O] <- torch [O, I, kh, kw]
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:  # dense kernel [I, O] <- torch [O, I]
    return (shape[1], shape[0])
  return tuple(shape)


def _to_flax(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def _encoder(arch: str, num_classes: int | None = None):
  if arch not in ENCODERS:
    raise ValueError(f'unknown arch {arch!r}; the converter knows {sorted(ENCODERS)}')
  return build_encoder(arch, width=1.0, stem='imagenet', num_classes=num_classes)


def flax_shapes(arch: str, in_channels: int = 1, num_classes: int | None = None) -> dict:
  """Shapes of the ResNet variables {'params': ..., 'batch_stats': ...} (nested dicts).

  Args:
    arch: a name in `ENCODERS` (resnet18/34/50, densenet121/169).
    in_channels: input channels of the first convolution.
    num_classes: None for the encoder alone, else the size of a 'head' Dense layer.
  """
  model = _encoder(arch, num_classes)
  # 64 px is enough for shapes: parameter shapes do not depend on the image size
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 64, 64, in_channels), jnp.float32), train=False))
  return jax.tree_util.tree_map(lambda s: tuple(s.shape), flax.core.unfreeze(shapes),
                                is_leaf=lambda x: hasattr(x, 'shape'))


def torch_key_shapes(family: Family, arch: str, in_channels: int = 3,
                     num_classes: int | None = 1000) -> dict[str, tuple[int, ...]]:
  """The torchvision state dict of `arch` (a `family` encoder): key -> shape
  (num_batches_tracked left out); num_classes None leaves the head out."""
  shapes = flax_shapes(arch, in_channels, num_classes)
  flat = flax.traverse_util.flatten_dict(shapes, is_leaf=lambda _, v: isinstance(v, tuple))
  return {torch_key(family, path[0], path[1:]): _flax_to_torch_shape(shape)
          for path, shape in flat.items()}


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops a 'module.' (DataParallel) or 'model.' prefix shared by every key."""
  keys = list(state_dict)
  for prefix in ('module.', 'model.'):
    if keys and all(k.startswith(prefix) for k in keys):
      return {k[len(prefix):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _mismatch_report(family: Family, state_dict: Mapping[str, np.ndarray], arch: str,
                     in_channels_src: int, num_classes: int | None) -> str | None:
  """Why `state_dict` is not an `arch` checkpoint, or None when it is one."""
  expected = torch_key_shapes(family, arch, in_channels_src, num_classes)
  head = family.head
  present = {k: tuple(np.shape(v)) for k, v in state_dict.items()
             if not k.endswith('num_batches_tracked') and
             not (num_classes is None and k.startswith(head))}
  missing = sorted(set(expected) - set(present))
  unexpected = sorted(set(present) - set(expected))
  wrong = sorted(k for k in set(expected) & set(present) if expected[k] != present[k])
  if not (missing or unexpected or wrong):
    return None
  show = lambda keys: ', '.join(keys[:5]) + (f' ... ({len(keys)} in all)' if len(keys) > 5 else '')
  parts = []
  if missing:
    parts.append(f'missing keys: {show(missing)}')
  if unexpected:
    parts.append(f'unexpected keys: {show(unexpected)}')
  if wrong:
    parts.append('shape mismatch: ' + '; '.join(
        f'{k} is {present[k]}, {arch} expects {expected[k]}' for k in wrong[:5]) +
                 (f' ... ({len(wrong)} in all)' if len(wrong) > 5 else ''))
  return '; '.join(parts)


def convert(family: Family, state_dict: Mapping[str, np.ndarray], arch: str,
            in_channels: int = 1, normalize: str | None = 'imagenet',
            include_head: bool = False) -> dict[str, dict]:
  """A torchvision/timm state dict of a `family` encoder as our encoder's variables
  (the arguments and what is returned: `resnet_convert.convert_torch_resnet`).

  Raises:
    ValueError: the checkpoint is not an `arch` (naming missing, unexpected and
      mis-shaped keys, and the architecture of the family it does match when there is
      one), or the options are invalid.
  """
  if in_channels not in (1, 3):
    raise ValueError(f'in_channels must be 1 or 3, got {in_channels}')
  if normalize is not None and normalize not in NORMALIZATIONS:
    raise ValueError(f'normalize must be None or one of {sorted(NORMALIZATIONS)}, '
                     f'got {normalize!r}')
  _encoder(arch)  # names the valid archs for a typo
  if arch not in family.archs:
    raise ValueError(f'{arch!r} is not a {family.name}; {family.name}s: '
                     f'{", ".join(family.archs)}')
  sd = {family.rename(k): np.asarray(v, dtype=np.float32)
        for k, v in strip_prefix(state_dict).items() if not k.endswith('num_batches_tracked')}
  conv_key, norm_key, head_key = family.conv, family.norm, family.head + 'weight'
  if conv_key not in sd:
    raise ValueError(f'not a torchvision/timm {family.name} checkpoint: no key {conv_key} '
                     f'(keys start with {sorted(sd)[:5]}); expected an {arch} state dict.')
  src_channels = sd[conv_key].shape[1]
  num_classes = int(sd[head_key].shape[0]) if head_key in sd else None
  head_classes = num_classes if include_head else None
  if include_head and num_classes is None:
    raise ValueError(f'include_head=True but the checkpoint has no {head_key}')
  problem = _mismatch_report(family, sd, arch, src_channels, head_classes)
  if problem is not None:
    guess = next((other for other in family.archs if _mismatch_report(
        family, sd, other, src_channels, head_classes) is None), None)
    hint = f' It looks like a {guess} checkpoint: pass --arch={guess}.' if guess else ''
    raise ValueError(f'checkpoint is not a torchvision/timm {arch}: {problem}.{hint}')
  if src_channels not in (1, 3) or (src_channels == 1 and in_channels == 3):
    raise ValueError(f'cannot convert a checkpoint with {src_channels} input channels '
                     f'({conv_key} {sd[conv_key].shape}) to in_channels={in_channels}')
  if normalize is not None and src_channels != 3:
    raise ValueError(f'normalize={normalize!r} folds an RGB normalisation, but {conv_key} '
                     f'has {src_channels} input channel(s); pass normalize=None')

  conv1 = sd[conv_key].astype(np.float64)  # [O, I, 7, 7]; float64 while folding
  bn1_mean = sd[norm_key + '.running_mean'].astype(np.float64)
  if normalize is not None:
    mean, std = (np.asarray(v, np.float64) for v in NORMALIZATIONS[normalize])
    # conv(W, (x - m) / s) = conv(W / s, x) - sum_c (m_c / s_c) sum_taps W_c: the constant
    # moves into the BN that follows, whose output is (conv - running_mean) / ...
    bn1_mean = bn1_mean + np.einsum('oihw,i->o', conv1, mean / std)
    conv1 = conv1 / std[None, :, None, None]
  if in_channels == 1 and conv1.shape[1] == 3:
    conv1 = conv1.sum(axis=1, keepdims=True)
  sd[conv_key] = conv1.astype(np.float32)
  sd[norm_key + '.running_mean'] = bn1_mean.astype(np.float32)

  shapes = flax_shapes(arch, in_channels, head_classes)
  out = {}
  for collection in ('params', 'batch_stats'):
    flat = flax.traverse_util.flatten_dict(shapes[collection],
                                           is_leaf=lambda _, v: isinstance(v, tuple))
    tree = {}
    for path, shape in flat.items():
      value = _to_flax(sd[torch_key(family, collection, path)])
      assert value.shape == shape, (path, value.shape, shape)  # _mismatch_report checked
      tree[path] = np.ascontiguousarray(value, dtype=np.float32)
    out[collection] = flax.traverse_util.unflatten_dict(tree)
  return out
