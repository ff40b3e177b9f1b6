"""ResNet's torchvision/timm checkpoints: their names for our ResNet's variables, and the
conversion (`convert_torch_resnet`). torchvision and timm name ResNet parameters alike,
and `resnet.py` was laid out so that they map one to one (the table: `convert.py`).
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from cxr_jax.models import torch_weights

_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')


def torch_prefix(module: str) -> str:
  """Torch module path of a flax module name at the ResNet's top level or in a block."""
  if module == 'conv_init':
    return 'conv1'
  if module == 'bn_init':
    return 'bn1'
  if module == 'head':
    return 'fc'
  if module == 'proj_conv':
    return 'downsample.0'
  if module == 'proj_bn':
    return 'downsample.1'
  m = _BLOCK.match(module)
  if m:
    return f'layer{m.group(1)}.{m.group(2)}'
  return module  # conv1..3 and bn1..3 inside a block keep their names


FAMILY = torch_weights.Family(
    name='ResNet', conv='conv1.weight', norm='bn1', head='fc.', torch_prefix=torch_prefix,
    archs=('resnet18', 'resnet34', 'resnet50'))


def convert_torch_resnet(state_dict: Mapping[str, np.ndarray], arch: str, in_channels: int = 1,
                         normalize: str | None = 'imagenet',
                         include_head: bool = False) -> dict[str, dict]:
  """Converts a torchvision/timm ResNet state dict into our encoder's variables.

  Args:
    state_dict: torch key -> array (numpy, or anything `np.asarray` takes, e.g. CPU
      tensors); an ImageNet checkpoint has conv1.weight [64, 3, 7, 7] and fc [1000, C].
    arch: which ResNet the checkpoint must be: 'resnet18' | 'resnet34' | 'resnet50'.
    in_channels: input channels of the converted model: 1 folds the RGB kernels of conv1
      into one by summing them (a gray image replicated to RGB then gives the same
      output); 3 keeps them. A 1-channel checkpoint converts only to in_channels=1.
    normalize: 'imagenet' folds torchvision's input normalisation into conv1 and bn1 so
      that the converted model takes images in [0, 1] (see `convert.py`'s docstring);
      None converts the weights unchanged.
    include_head: also convert fc into params['head'] (for `build_encoder(arch,
      num_classes=K)`); fine-tuning uses its own head, so by default fc is dropped.

  Returns:
    {'params': tree, 'batch_stats': tree}: the variables of
    `build_encoder(arch, width=1.0, stem='imagenet', num_classes=K or None)`, float32 numpy.

  Raises:
    ValueError: the checkpoint is not an `arch` ResNet (naming missing, unexpected and
      mis-shaped keys, and the architecture it does match when there is one), or the
      options are invalid.
  """
  return torch_weights.convert(FAMILY, state_dict, arch, in_channels, normalize, include_head)
