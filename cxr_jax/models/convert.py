"""Import supervised ImageNet weights from a torchvision or timm ResNet/DenseNet checkpoint.

The 'imagenet' initialisation regime starts fine-tuning (or curricular stage 1) from a
supervised ImageNet ResNet that the user already has on disk, since nothing can be
downloaded at run time:

    python -m cxr_jax.models.convert --src=resnet50-11ad3fa6.pth --arch=resnet50 \
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

import argparse
import os
import re
from typing import Any, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cxr_jax.models.merge import merge_strict
from cxr_jax.models.registry import build_encoder
from cxr_jax.models.registry import ENCODERS

# torchvision's ImageNet input normalisation (transforms.Normalize in its model cards).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = {'imagenet': (IMAGENET_MEAN, IMAGENET_STD)}

# flax leaf -> torch parameter name (conv/dense 'kernel', BN 'scale'/'bias'/'mean'/'var')
_LEAF_TORCH = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
               'var': 'running_var'}
_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')
# wrappers that training scripts put around a state dict
_CONTAINER_KEYS = ('state_dict', 'model_state_dict', 'model', 'module', 'net')


_DENSE_LAYER = re.compile(r'^denseblock(\d+)_denselayer(\d+)$')
# torchvision's DenseNet loader: 'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'
_OLD_DENSENET_KEY = re.compile(
    r'^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$')

# per family: torch keys of the first convolution, of the norm after it, and the head prefix
_FAMILIES = {
    'resnet': {'conv': 'conv1.weight', 'norm': 'bn1', 'head': 'fc.'},
    'densenet': {'conv': 'features.conv0.weight', 'norm': 'features.norm0',
                 'head': 'classifier.'},
}


def _family(arch: str) -> str:
  return 'densenet' if arch.startswith('densenet') else 'resnet'


def _densenet_torch_prefix(module: str) -> str:
  """Torch module path of a flax module name in a DenseNet (top level or nested)."""
  if module == 'head':
    return 'classifier'
  m = _DENSE_LAYER.match(module)
  if m:
    return f'features.denseblock{m.group(1)}.denselayer{m.group(2)}'
  if module in ('conv0', 'norm0', 'norm5') or module.startswith('transition'):
    return f'features.{module}'
  return module  # norm1/conv1/norm2/conv2 in a layer, norm/conv in a transition


def _torch_prefix(module: str) -> str:
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


def torch_key(collection: str, path: tuple[str, ...], arch: str = 'resnet18') -> str:
  """The torch state-dict key of one flax leaf.

  Args:
    collection: 'params' or 'batch_stats'.
    path: the leaf's path inside the encoder's collection, e.g.
      ('stage2_block0', 'proj_bn', 'scale').
    arch: the encoder (only its family, ResNet or DenseNet, matters).

  Returns:
    e.g. 'layer2.0.downsample.1.weight', or for a DenseNet
    'features.denseblock1.denselayer2.norm1.running_var'.
  """
  *modules, leaf = path
  if leaf not in _LEAF_TORCH:
    raise ValueError(f'no torch name for flax {collection}/{"/".join(path)}')
  to_torch = _densenet_torch_prefix if _family(arch) == 'densenet' else _torch_prefix
  prefix = '.'.join(to_torch(m) for m in modules)
  name = _LEAF_TORCH[leaf]
  return f'{prefix}.{name}'


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


def torch_key_shapes(arch: str, in_channels: int = 3,
                     num_classes: int | None = 1000) -> dict[str, tuple[int, ...]]:
  """The torchvision state dict of `arch`: key -> shape (num_batches_tracked left out).

  Args:
    arch: 'resnet18' | 'resnet34' | 'resnet50' | 'densenet121' | 'densenet169'.
    in_channels: input channels of torch's first conv (3 for ImageNet checkpoints).
    num_classes: classes of fc / classifier (1000 for ImageNet); None leaves it out.
  """
  shapes = flax_shapes(arch, in_channels, num_classes)
  flat = flax.traverse_util.flatten_dict(shapes, is_leaf=lambda _, v: isinstance(v, tuple))
  return {torch_key(path[0], path[1:], arch): _flax_to_torch_shape(shape)
          for path, shape in flat.items()}


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drops a 'module.' (DataParallel) or 'model.' prefix shared by every key, and renames
  old torchvision DenseNet keys ('denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight')."""
  keys = list(state_dict)
  out = dict(state_dict)
  for prefix in ('module.', 'model.'):
    if keys and all(k.startswith(prefix) for k in keys):
      out = {k[len(prefix):]: v for k, v in state_dict.items()}
      break
  return {_OLD_DENSENET_KEY.sub(r'\1\2', k): v for k, v in out.items()}


def _mismatch_report(state_dict: Mapping[str, np.ndarray], arch: str, in_channels_src: int,
                     num_classes: int | None) -> str | None:
  """Why `state_dict` is not an `arch` checkpoint, or None when it is one."""
  expected = torch_key_shapes(arch, in_channels_src, num_classes)
  head = _FAMILIES[_family(arch)]['head']
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


def _guess_arch(state_dict, in_channels_src, num_classes, family: str) -> str | None:
  for other in sorted(a for a in ENCODERS if _family(a) == family):
    if _mismatch_report(state_dict, other, in_channels_src, num_classes) is None:
      return other
  return None


def convert_torch_resnet(state_dict: Mapping[str, np.ndarray], arch: str, in_channels: int = 1,
                         normalize: str | None = 'imagenet',
                         include_head: bool = False) -> dict[str, dict]:
  """Converts a torchvision/timm ResNet or DenseNet state dict into our encoder's variables.

  (The name is historical; `convert_torch` is the same function.) For a DenseNet read
  features.conv0 / features.norm0 / classifier wherever conv1 / bn1 / fc appear below.

  Args:
    state_dict: torch key -> array (numpy, or anything `np.asarray` takes, e.g. CPU
      tensors); an ImageNet checkpoint has conv1.weight [64, 3, 7, 7] and fc [1000, C].
    arch: which ResNet the checkpoint must be: 'resnet18' | 'resnet34' | 'resnet50'.
    in_channels: input channels of the converted model: 1 folds the RGB kernels of conv1
      into one by summing them (a gray image replicated to RGB then gives the same
      output); 3 keeps them. A 1-channel checkpoint converts only to in_channels=1.
    normalize: 'imagenet' folds torchvision's input normalisation into conv1 and bn1 so
      that the converted model takes images in [0, 1] (see the module docstring); None
      converts the weights unchanged.
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
  if in_channels not in (1, 3):
    raise ValueError(f'in_channels must be 1 or 3, got {in_channels}')
  if normalize is not None and normalize not in NORMALIZATIONS:
    raise ValueError(f'normalize must be None or one of {sorted(NORMALIZATIONS)}, '
                     f'got {normalize!r}')
  _encoder(arch)  # names the valid archs for a typo
  sd = {k: np.asarray(v, dtype=np.float32) for k, v in _strip_prefix(state_dict).items()
        if not k.endswith('num_batches_tracked')}
  family = _family(arch)
  names = _FAMILIES[family]
  conv_key, norm_key, head_key = names['conv'], names['norm'], names['head'] + 'weight'
  if conv_key not in sd:
    other = next((f for f, n in _FAMILIES.items() if n['conv'] in sd), None)
    hint = (f' It looks like a {other} checkpoint: pass a {other} --arch '
            f'({", ".join(sorted(a for a in ENCODERS if _family(a) == other))}).'
            if other else '')
    kind = 'DenseNet' if family == 'densenet' else 'ResNet'
    raise ValueError(f'not a torchvision/timm {kind} checkpoint: no key {conv_key} '
                     f'(keys start with {sorted(sd)[:5]}); expected an {arch} state dict.'
                     f'{hint}')
  src_channels = sd[conv_key].shape[1]
  num_classes = int(sd[head_key].shape[0]) if head_key in sd else None
  head_classes = num_classes if include_head else None
  if include_head and num_classes is None:
    raise ValueError(f'include_head=True but the checkpoint has no {head_key}')
  problem = _mismatch_report(sd, arch, src_channels, head_classes)
  if problem is not None:
    guess = _guess_arch(sd, src_channels, head_classes, family)
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
      value = _to_flax(sd[torch_key(collection, path, arch)])
      assert value.shape == shape, (path, value.shape, shape)  # _mismatch_report checked
      tree[path] = np.ascontiguousarray(value, dtype=np.float32)
    out[collection] = flax.traverse_util.unflatten_dict(tree)
  return out


convert_torch = convert_torch_resnet


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
  for k, v in _strip_prefix(raw).items():
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
    variables: {'params', 'batch_stats'} of a ResNet (as `convert_torch_resnet` returns),
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
                            'python -m cxr_jax.models.convert --src=... --arch=... --out=...)')
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
  variables = convert_torch_resnet(load_state_dict(args.src), args.arch, args.in_channels,
                                   normalize=normalize)
  meta = {'arch': args.arch, 'in_channels': args.in_channels,
          'normalize': args.normalize, 'source': os.path.basename(args.src)}
  save_encoder(args.out, variables, meta)
  count = sum(np.size(x) for x in jax.tree_util.tree_leaves(variables['params']))
  print(f'wrote {args.out}: {args.arch} encoder, {count / 1e6:.2f}M parameters, '
        f'in_channels={args.in_channels}, normalize={args.normalize}')
  return args.out


if __name__ == '__main__':
  main()
