"""Converts a torchvision/timm ImageNet ResNet or DenseNet checkpoint into encoder weights
for the 'imagenet' regime (config.finetune.imagenet_checkpoint):

    python -m cxr_jax.cli.convert --src=resnet50-11ad3fa6.pth --arch=resnet50 \\
        --out=imagenet_resnet50.msgpack [--in_channels=1] [--normalize=imagenet]

(`cxr-convert ...` once installed.) What is converted and how: `cxr_jax/models/convert.py`.
"""
import argparse
import os

import jax
import numpy as np

from cxr_jax.models import convert
from cxr_jax.models.registry import ENCODERS


def main(argv=None):
  parser = argparse.ArgumentParser(
      description='Convert a torchvision/timm ResNet or DenseNet checkpoint to cxr_jax '
      'encoder weights.')
  parser.add_argument('--src', required=True, help='.pth/.pt state dict or .safetensors')
  parser.add_argument('--arch', required=True, choices=sorted(ENCODERS))
  parser.add_argument('--out', required=True, help='output .msgpack')
  parser.add_argument('--in_channels', type=int, default=1, choices=(1, 3),
                      help='1: fold RGB into one gray channel (sum); 3: keep RGB')
  parser.add_argument('--normalize', default='imagenet', choices=('imagenet', 'none'),
                      help="fold torchvision's ImageNet normalisation into the first layer so "
                      'the model takes [0, 1] images (default), or leave the weights as they are')
  args = parser.parse_args(argv)
  normalize = None if args.normalize == 'none' else args.normalize
  variables = convert.convert_state_dict(convert.load_state_dict(args.src), args.arch,
                                        args.in_channels, normalize=normalize)
  meta = {'arch': args.arch, 'in_channels': args.in_channels,
          'normalize': args.normalize, 'source': os.path.basename(args.src)}
  convert.save_encoder(args.out, variables, meta)
  count = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables['params']))
  print(f'wrote {args.out}: {args.arch} encoder, {count / 1e6:.2f}M parameters, '
        f'in_channels={args.in_channels}, normalize={args.normalize}')
  return args.out


def run():
  """The console script: `main` with its return value (for callers) left out of the exit
  code."""
  main()


if __name__ == '__main__':
  main()
