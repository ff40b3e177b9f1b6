"""Import supervised ImageNet weights from a torchvision or timm ResNet/DenseNet checkpoint:
reading the file, the family registry, the encoder file format.

The 'imagenet' initialisation regime starts fine-tuning (or curricular stage 1) from a
supervised ImageNet ResNet that the user already has on disk, since nothing can be
downloaded at run time:

    python -m cxr_jax.cli.convert --src=resnet50-11ad3fa6.pth --arch=resnet50 \
        --out=imagenet_resnet50.msgpack [--in_channels=1] [--normalize=imagenet]

The source is a torchvision (`torchvision.models.resnet50().state_dict()`) or timm
(`timm.create_model('resnet50').state_dict()`) state dict, saved as `.pth`/`.pt`
(`torch.save`; read with `torch.load(weights_only=True)`, so torch must be installed) or
as `.safetensors` (read with `safetensors.numpy`, no torch needed). Both libraries name
ResNet parameters alike (conv1, bn1, layer{i}.{j}.conv{k}, layer{i}.{j}.downsample.{0,1},
fc), and `cxr_jax/models/resnet.py` was laid out so that they map one to one:

    torch                                   flax (ResNet variables)
    conv1.weight [O, I, 7, 7]               params/conv_init/kernel [7, 7, I, O]
    bn1.weight, bn1.bias                    params/bn_init/scale, bias
    bn1.running_mean, bn1.running_var       batch_stats/bn_init/mean, var
    layer{i}.{j}.conv{k}.weight             params/stage{i}_block{j}/conv{k}/kernel
    layer{i}.{j}.bn{k}.*                    .../stage{i}_block{j}/bn{k}/*
    layer{i}.{j}.downsample.0.weight        params/stage{i}_block{j}/proj_conv/kernel
    layer{i}.{j}.downsample.1.*             .../stage{i}_block{j}/proj_bn/*
    fc.weight [K, C], fc.bias [K]           params/head/kernel [C, K], bias (only with
                                            include_head=True; fine-tuning drops it)

DenseNet-121/169 (`cxr_jax/models/densenet.py`) map the same way, module by module:

    torch                                              flax (DenseNet variables)
    features.conv0, features.norm0                     conv0, norm0
    features.denseblock{i}.denselayer{j}.norm1/conv1/  denseblock{i}_denselayer{j}/norm1/
      norm2/conv2                                        conv1/norm2/conv2
    features.transition{i}.norm/conv                   transition{i}/norm, conv
    features.norm5                                     norm5
    classifier.weight, classifier.bias                 head/kernel, bias (include_head=True)

Old torchvision DenseNet checkpoints (the downloadable .pth files) name the dense layers'
modules 'norm.1', 'conv.2', ...; they are renamed as torchvision's own loader does. The
first convolution (conv0) and norm (norm0) take the channel fold and the normalisation
below exactly as conv1/bn1 of a ResNet.

Each family's mapping sits beside its model, big_vision's `load()` pattern:
`resnet_convert.py` (`convert_torch_resnet`) and `densenet_convert.py`
(`convert_torch_densenet`), over what they share in `torch_weights.py`; here
`convert_state_dict(state_dict, arch)` picks the family by `arch`.

`num_batches_tracked` buffers are ignored. The converted encoder is meant for
`build_encoder(arch, width=1.0, stem='imagenet')` (config.model.width=1.0,
config.model.stem='imagenet').

Two input adaptations, both exact algebra on the first convolution:
  * Channels (in_channels=1): a gray radiograph replicated to RGB gives
    conv(W, [g, g, g]) = conv(sum_c W_c, g), so the RGB kernels are summed into one.
  * Normalisation (normalize='imagenet'): torchvision models expect
    (x_c - mean_c) / std_c, while our pipeline feeds images in [0, 1]. Dividing kernel c
    by std_c and adding the constant sum_c mean_c / std_c * sum_taps W_c to bn1's running
    mean makes the converted model on [0, 1] inputs compute what the torch model computes
    on normalised inputs. This is exact away from the image border; within 3 pixels of it
    torch zero-pads the *normalised* image while we zero-pad the raw one, a small
    difference that fine-tuning absorbs. normalize=None skips it (exact everywhere, for
    inputs normalised the torch way).

File format (`save_encoder`): a flax msgpack of
    {'params': {'encoder': <ResNet params>}, 'batch_stats': {'encoder': <ResNet stats>},
     'meta': {'arch', 'in_channels', 'normalize', 'source', 'num_classes'}}
i.e. the variable layout of `ClassifierModel`/`SSLModel`, whose encoders live under
'encoder'; `load_encoder` returns the ResNet variables {'params', 'batch_stats'} and
`merge_into` puts them into a model's freshly initialised variables, refusing any
mismatch (width, stem, arch) instead of silently keeping random weights.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import flax
import jax
import numpy as np

from cxr_jax.models import densenet_convert
from cxr_jax.models import resnet_convert
from cxr_jax.models import torch_weights
from cxr_jax.models.merge import merge_strict
from cxr_jax.models.registry import ENCODERS
from cxr_jax.models.torch_weights import (  # noqa: F401  (re-exported)
    IMAGENET_MEAN, IMAGENET_STD, NORMALIZATIONS, flax_shapes, strip_prefix)

# the families' torch namings and converters, by the `ENCODERS` names of each
FAMILIES = {'resnet': (resnet_convert.FAMILY, resnet_convert.convert_torch_resnet),
            'densenet': (densenet_convert.FAMILY, densenet_convert.convert_torch_densenet)}
# wrappers that training scripts put around a state dict
_CONTAINER_KEYS = ('state_dict', 'model_state_dict', 'model', 'module', 'net')


def family_of(arch: str) -> str:
  """'resnet' or 'densenet': the family whose converter reads an `arch` checkpoint."""
  for name, (family, _) in FAMILIES.items():
    if arch in family.archs:
      return name
  raise ValueError(f'unknown arch {arch!r}; the converter knows {sorted(ENCODERS)}')


def torch_key_shapes(arch: str, in_channels: int = 3,
                     num_classes: int | None = 1000) -> dict[str, tuple[int, ...]]:
  """The torchvision state dict of `arch`: key -> shape (num_batches_tracked left out).

  Args:
    arch: 'resnet18' | 'resnet34' | 'resnet50' | 'densenet121' | 'densenet169'.
    in_channels: input channels of torch's first conv (3 for ImageNet checkpoints).
    num_classes: classes of fc / classifier (1000 for ImageNet); None leaves it out.
  """
  family, _ = FAMILIES[family_of(arch)]
  return torch_weights.torch_key_shapes(family, arch, in_channels, num_classes)


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str, in_channels: int = 1,
                       normalize: str | None = 'imagenet',
                       include_head: bool = False) -> dict[str, dict]:
  """An `arch` checkpoint (ResNet or DenseNet) as our encoder's variables, by its family's
  converter (the arguments: `resnet_convert.convert_torch_resnet`). A checkpoint of the
  other family is named as such (which --arch to pass)."""
  name = family_of(arch)
  family, convert = FAMILIES[name]
  keys = {family.rename(k) for k in strip_prefix(state_dict)}
  if family.conv not in keys:
    other = next((n for n, (f, _) in FAMILIES.items() if n != name and f.conv in keys), None)
    if other is not None:
      raise ValueError(f'not a torchvision/timm {family.name} checkpoint: no key '
                       f'{family.conv}; it looks like a {other} checkpoint: pass a {other} '
                       f'--arch ({", ".join(FAMILIES[other][0].archs)}).')
  return convert(state_dict, arch, in_channels, normalize, include_head)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torch checkpoint file into key -> float32 numpy array.

  `.safetensors` is read with `safetensors.numpy` (no torch needed); anything else
  (`.pth`, `.pt`, `.bin`) with `torch.load(weights_only=True)`, which never runs code
  from the file. A dict wrapping the state dict under 'state_dict', 'model', ... is
  unwrapped, and a 'module.' prefix (DataParallel) is stripped.

  Args:
    path: the checkpoint file.

  Returns:
    dict of float32 arrays (integer buffers such as num_batches_tracked keep their dtype).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'checkpoint {path} does not exist')
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # optional: safetensors
    except ImportError as e:
      raise ImportError(f'reading {path} needs the safetensors package '
                        '(pip install safetensors)') from e
    raw = load_file(path)
  else:
    try:
      import torch  # optional: torch
    except ImportError as e:
      raise ImportError(f'reading {path} needs torch (pip install torch; or save the '
                        'state dict as .safetensors, which needs only safetensors)') from e
    try:
      raw = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle errors name the offending class, not the fix
      raise ValueError(f'torch.load({path!r}, weights_only=True) failed: {e}. Save the bare '
                       'state dict: torch.save(model.state_dict(), path)') from e
  while isinstance(raw, Mapping) and not any(hasattr(v, 'shape') for v in raw.values()):
    inner = next((raw[k] for k in _CONTAINER_KEYS if k in raw and isinstance(raw[k], Mapping)),
                 None)
    if inner is None:
      raise ValueError(f'{path}: no state dict found; top-level keys {sorted(raw)[:10]}')
    raw = inner
  if not isinstance(raw, Mapping):
    raise ValueError(f'{path}: expected a state dict (a mapping of tensors), got '
                     f'{type(raw).__name__}; save model.state_dict(), not the model')
  out = {}
  for k, v in strip_prefix(raw).items():
    if not hasattr(v, 'shape'):
      continue  # e.g. a stray epoch counter next to the tensors
    if hasattr(v, 'detach'):  # a torch tensor; bf16/fp16 go through float32
      v = v.detach().cpu()
      v = v.float().numpy() if v.is_floating_point() else v.numpy()
    v = np.asarray(v)
    out[k] = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
  return out


def _encoder_vars(variables: Mapping[str, Any]) -> dict[str, Any]:
  """ResNet variables from either the ResNet layout or the model layout ('encoder')."""
  out = {}
  for collection in ('params', 'batch_stats'):
    tree = flax.core.unfreeze(variables[collection])
    out[collection] = tree['encoder'] if 'encoder' in tree else tree
  return out


def save_encoder(path: str | os.PathLike, variables: Mapping[str, Any],
                 meta: Mapping[str, Any] | None = None) -> str:
  """Writes encoder variables as flax msgpack (layout in the module docstring).

  Args:
    path: output file (conventionally `.msgpack`); parent folders are created.
    variables: {'params', 'batch_stats'} of a ResNet (as `convert_state_dict` returns),
      or of a model holding it under 'encoder' (only the encoder is written).
    meta: strings/numbers stored beside the weights (arch, in_channels, ...).

  Returns:
    `path` as a string.
  """
  path = os.fspath(path)
  enc = jax.tree_util.tree_map(np.asarray, _encoder_vars(variables))
  payload = {'params': {'encoder': enc['params']},
             'batch_stats': {'encoder': enc['batch_stats']}, 'meta': dict(meta or {})}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(payload))
  os.replace(tmp, path)  # never leave a half-written file under the real name
  return path


def _read(path) -> dict:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'encoder file {path} does not exist (convert a checkpoint with '
                            'python -m cxr_jax.cli.convert --src=... --arch=... --out=...)')
  with open(path, 'rb') as f:
    payload = flax.serialization.msgpack_restore(f.read())
  if not isinstance(payload, dict) or 'params' not in payload or 'batch_stats' not in payload:
    raise ValueError(f'{path} is not an encoder file written by save_encoder')
  return payload


def load_encoder(path: str | os.PathLike, arch: str | None = None,
                 in_channels: int | None = None) -> dict[str, dict]:
  """Reads a `save_encoder` file.

  Args:
    path: the .msgpack file.
    arch, in_channels: when given, checked against the file's meta (a clear error
      instead of a shape mismatch deep inside a merge).

  Returns:
    The ResNet variables {'params': tree, 'batch_stats': tree} (numpy arrays).
  """
  payload = _read(path)
  meta = payload.get('meta', {})
  for key, want in (('arch', arch), ('in_channels', in_channels)):
    if want is not None and key in meta and meta[key] != want:
      raise ValueError(f'{os.fspath(path)} holds a {key}={meta[key]!r} encoder, but '
                       f'{key}={want!r} was asked for')
  return _encoder_vars(payload)


def load_encoder_meta(path: str | os.PathLike) -> dict[str, Any]:
  """The meta dict of a `save_encoder` file (arch, in_channels, normalize, source)."""
  return dict(_read(path).get('meta', {}))


IMAGENET_HINT = ('; converted ImageNet weights need config.model.width=1.0 and '
                 'stem=imagenet; check config.model.name and the number of input channels')


def merge_into(variables: Mapping[str, Any], encoder_vars: Mapping[str, Any],
               what: str = 'imagenet checkpoint', hint: str = IMAGENET_HINT) -> dict[str, Any]:
  """`variables` of a model (with an 'encoder' subtree) with its encoder replaced.

  Strict (`cxr_jax.models.merge.merge_strict`): a width, stem or arch that differs from
  the source's is an error naming the first differing leaf, never a silent fall back to
  random weights.

  Args:
    variables: freshly initialised {'params': {'encoder': ..., ...}, 'batch_stats': ...}.
    encoder_vars: ResNet variables {'params', 'batch_stats'} (from `load_encoder`).
    what: how to name the source in errors.
    hint: appended to errors (what to check).

  Returns:
    A new dict: `variables` with params['encoder'] and batch_stats['encoder'] taken from
    `encoder_vars` (cast to the fresh leaves' dtypes).
  """
  out = {k: dict(flax.core.unfreeze(v)) for k, v in variables.items()}
  for collection in ('params', 'batch_stats'):
    out[collection]['encoder'] = merge_strict(
        out[collection]['encoder'], encoder_vars[collection], f'{what} ({collection}/encoder)',
        hint)
  return out
