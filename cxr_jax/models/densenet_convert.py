"""DenseNet's torchvision/timm checkpoints: their names for our DenseNet-121/169's
variables (`densenet.py`, module by module; the table: `convert.py`), the renaming of old
torchvision checkpoints, and the conversion (`convert_torch_densenet`).
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from cxr_jax.models import torch_weights

_DENSE_LAYER = re.compile(r'^denseblock(\d+)_denselayer(\d+)$')
# torchvision's DenseNet loader: 'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'
_OLD_DENSENET_KEY = re.compile(
    r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$')


def rename(key: str) -> str:
  """An old torchvision DenseNet key (the downloadable .pth files name the dense layers'
  modules 'norm.1', 'conv.2', ...) as torchvision's own loader renames it."""
  return _OLD_DENSENET_KEY.sub(r'\1\2', key)


def torch_prefix(module: str) -> str:
  """Torch module path of a flax module name in a DenseNet (top level or nested)."""
  if module == 'head':
    return 'classifier'
  m = _DENSE_LAYER.match(module)
  if m:
    return f'features.denseblock{m.group(1)}.denselayer{m.group(2)}'
  if module in ('conv0', 'norm0', 'norm5') or module.startswith('transition'):
    return f'features.{module}'
  return module  # norm1/conv1/norm2/conv2 in a layer, norm/conv in a transition


FAMILY = torch_weights.Family(
    name='DenseNet', conv='features.conv0.weight', norm='features.norm0', head='classifier.',
    torch_prefix=torch_prefix, archs=('densenet121', 'densenet169'), rename=rename)


def convert_torch_densenet(state_dict: Mapping[str, np.ndarray], arch: str,
                           in_channels: int = 1, normalize: str | None = 'imagenet',
                           include_head: bool = False) -> dict[str, dict]:
  """Converts a torchvision/timm DenseNet state dict into our encoder's variables: as
  `resnet_convert.convert_torch_resnet`, with features.conv0 / features.norm0 /
  classifier where a ResNet has conv1 / bn1 / fc; arch 'densenet121' | 'densenet169'.
  Old torchvision key names are accepted (`rename`)."""
  return torch_weights.convert(FAMILY, state_dict, arch, in_channels, normalize, include_head)
