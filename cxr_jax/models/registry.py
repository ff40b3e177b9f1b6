"""The encoders by name (`config.model.name`): name -> constructor, above the backbones."""
from __future__ import annotations

import flax.linen as nn

from cxr_jax.models import densenet
from cxr_jax.models import resnet

ENCODERS = {'resnet18': resnet.resnet18, 'resnet34': resnet.resnet34,
            'resnet50': resnet.resnet50, 'densenet121': densenet.densenet121,
            'densenet169': densenet.densenet169}


def build_encoder(name: str, **kw) -> nn.Module:
  """Builds an encoder by name ('resnet18' | 'resnet34' | 'resnet50' | 'densenet121' |
  'densenet169').

  Args:
    name: the encoder's name.
    **kw: `ResNet` / `DenseNet` attributes (width, num_classes, stem, dtype, remat, ...).

  Raises:
    ValueError: if `name` is not a known encoder.
  """
  if name not in ENCODERS:
    raise ValueError(f'Unknown encoder {name!r}; valid encoders: '
                     f'{sorted(ENCODERS)}.')
  return ENCODERS[name](**kw)
