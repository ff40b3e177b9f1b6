"""ImageNet import: a random torch ResNet and our ResNet on its converted weights agree.

torchvision itself may not be importable next to a CPU-only torch, so the reference is a
minimal ResNet written here with torchvision's exact module names (and timm's, which are
the same): conv1, bn1, layer{i}.{j}.conv{k}/bn{k}, downsample.{0,1}, fc; v1.5
bottlenecks (stride on the 3x3). The torch tests skip cleanly without torch; the
wrong-architecture checks and the file round trip need only numpy (and safetensors).
"""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from cxr_jax.models import build_encoder
from cxr_jax.cli import convert as convert_cli
from cxr_jax.models import convert
from cxr_jax.models import resnet_convert
from cxr_jax.models import heads


def _torch_resnet(arch):
  """A torchvision-named ResNet with random weights *and* random BN statistics."""
  torch = pytest.importorskip('torch')
  nn = torch.nn

  class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.downsample = None
      if stride != 1 or cin != width:
        self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                        nn.BatchNorm2d(width))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
      super().__init__()
      out = width * 4
      self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, out, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(out)
      self.downsample = None
      if stride != 1 or cin != out:
        self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = torch.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
      return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

  block, sizes = {'resnet18': (BasicBlock, (2, 2, 2, 2)),
                  'resnet50': (Bottleneck, (3, 4, 6, 3))}[arch]

  class ResNet(nn.Module):

    def __init__(self, num_classes=1000):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = 64
      for i, n in enumerate(sizes):
        layers = []
        for j in range(n):
          layers.append(block(cin, 64 * 2**i, 2 if i > 0 and j == 0 else 1))
          cin = 64 * 2**i * block.expansion
        setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
      self.fc = nn.Linear(cin, num_classes)

    def features(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      for i in range(4):
        x = getattr(self, f'layer{i + 1}')(x)
      return x.mean(dim=(2, 3))

    def forward(self, x):
      return self.fc(self.features(x))

  torch.manual_seed(0)
  model = ResNet()
  with torch.no_grad():
    # default BN init (scale 1, shift 0, mean 0, var 1) would not test the BN mapping
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
  return model.eval()


def _torch_np(model, x_nchw):
  torch = pytest.importorskip('torch')
  with torch.no_grad():
    return model.features(torch.from_numpy(x_nchw)).numpy()


def _state_dict_np(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _ours(arch, variables, x_nhwc, **kw):
  model = build_encoder(arch, width=1.0, stem='imagenet', **kw)
  return np.asarray(model.apply(variables, jnp.asarray(x_nhwc), train=False))


def _assert_close(ours, ref):
  scale = float(np.max(np.abs(ref)))
  assert scale > 1e-3  # a dead network would compare zeros with zeros
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_gray_image_matches_torch_on_replicated_rgb(arch):
  """Folded 1-channel conv1: ours(gray) == torch(gray replicated to RGB)."""
  model = _torch_resnet(arch)
  gray = np.random.default_rng(1).uniform(size=(2, 64, 64, 1)).astype(np.float32)
  ref = _torch_np(model, np.repeat(gray.transpose(0, 3, 1, 2), 3, axis=1))
  variables = resnet_convert.convert_torch_resnet(_state_dict_np(model), arch, in_channels=1,
                                           normalize=None)
  assert variables['params']['conv_init']['kernel'].shape == (7, 7, 1, 64)
  assert 'head' not in variables['params']
  _assert_close(_ours(arch, variables, gray), ref)


def test_rgb_kept_and_head_match_torch_logits():
  model = _torch_resnet('resnet18')
  rgb = np.random.default_rng(2).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  torch = pytest.importorskip('torch')
  with torch.no_grad():
    ref = model(torch.from_numpy(rgb.transpose(0, 3, 1, 2))).numpy()
  variables = resnet_convert.convert_torch_resnet(_state_dict_np(model), 'resnet18', in_channels=3,
                                           normalize=None, include_head=True)
  _assert_close(_ours('resnet18', variables, rgb, num_classes=1000), ref)


def test_imagenet_normalisation_is_folded_into_the_stem():
  """ours(gray in [0, 1]) == torch((gray - mean) / std per channel), away from the border.

  Compared after conv1 + bn1 (before the max-pool mixes border pixels inwards): an output
  pixel o of the 7x7/2 conv with padding 3 reads inputs 2o-3 .. 2o+3, so the border
  difference (torch zero-pads the normalised image, we the raw one) stays at o < 2 and
  o > (H - 4) / 2.
  """
  torch = pytest.importorskip('torch')
  model = _torch_resnet('resnet18')
  gray = np.random.default_rng(3).uniform(size=(2, 32, 32, 1)).astype(np.float32)
  mean = np.asarray(convert.IMAGENET_MEAN, np.float32)[None, :, None, None]
  std = np.asarray(convert.IMAGENET_STD, np.float32)[None, :, None, None]
  normed = (np.repeat(gray.transpose(0, 3, 1, 2), 3, axis=1) - mean) / std
  with torch.no_grad():
    ref = model.bn1(model.conv1(torch.from_numpy(normed))).numpy().transpose(0, 2, 3, 1)
  v = resnet_convert.convert_torch_resnet(_state_dict_np(model), 'resnet18', in_channels=1)
  x = jax.lax.conv_general_dilated(gray, v['params']['conv_init']['kernel'], (2, 2),
                                   ((3, 3), (3, 3)),
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  bn_p, bn_s = v['params']['bn_init'], v['batch_stats']['bn_init']
  ours = np.asarray((x - bn_s['mean']) / np.sqrt(bn_s['var'] + 1e-5) * bn_p['scale']
                    + bn_p['bias'])
  inner = slice(2, 15)  # 16 outputs; o = 2..14 read inputs 1..31 only
  _assert_close(ours[:, inner, inner], ref[:, inner, inner])
  # and the border does differ, so the test above is not vacuous
  assert np.max(np.abs(ours[:, 0] - ref[:, 0])) > 1e-3


def _fake_state_dict(arch, seed=0, in_channels=3):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32)
          for k, s in convert.torch_key_shapes(arch, in_channels).items()}


def test_wrong_architecture_is_refused_by_name():
  sd = _fake_state_dict('resnet18')
  with pytest.raises(ValueError) as e:
    resnet_convert.convert_torch_resnet(sd, 'resnet50')
  msg = str(e.value)
  assert 'not a torchvision/timm resnet50' in msg
  assert 'layer1.0.conv3.weight' in msg  # a bottleneck key the checkpoint lacks
  assert 'looks like a resnet18 checkpoint' in msg
  # resnet18 and resnet34 differ only in depth: the extra blocks are named missing
  with pytest.raises(ValueError, match=r'missing keys: .*layer1\.2\.'):
    resnet_convert.convert_torch_resnet(sd, 'resnet34')


def test_shape_mismatch_and_unknown_keys_are_named():
  sd = _fake_state_dict('resnet18')
  sd['layer2.0.conv1.weight'] = np.zeros((64, 64, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r'layer2\.0\.conv1\.weight is \(64, 64, 3, 3\), '
                     r'resnet18 expects \(128, 64, 3, 3\)'):
    resnet_convert.convert_torch_resnet(sd, 'resnet18')
  sd = _fake_state_dict('resnet18')
  sd['layer1.0.se.fc1.weight'] = np.zeros((4, 64), np.float32)
  with pytest.raises(ValueError, match=r'unexpected keys: layer1\.0\.se\.fc1\.weight'):
    resnet_convert.convert_torch_resnet(sd, 'resnet18')
  with pytest.raises(ValueError, match='no key conv1.weight'):
    resnet_convert.convert_torch_resnet({'blocks.0.weight': np.zeros(3)}, 'resnet18')
  with pytest.raises(ValueError, match='unknown arch'):
    resnet_convert.convert_torch_resnet(sd, 'resnet101')


def test_layout_without_torch():
  """Transposes and the RGB fold, checked leaf by leaf on a numpy state dict."""
  sd = _fake_state_dict('resnet18', seed=4)
  sd = dict(sd, **{'bn1.num_batches_tracked': np.array(7)})  # ignored buffer
  v = resnet_convert.convert_torch_resnet(sd, 'resnet18', in_channels=1, normalize=None)
  np.testing.assert_allclose(v['params']['conv_init']['kernel'][..., 0, :],
                             sd['conv1.weight'].sum(axis=1).transpose(1, 2, 0), atol=1e-6)
  np.testing.assert_array_equal(v['params']['stage2_block0']['proj_conv']['kernel'][0, 0],
                                sd['layer2.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(v['batch_stats']['stage4_block1']['bn2']['var'],
                                sd['layer4.1.bn2.running_var'])
  np.testing.assert_array_equal(v['params']['stage3_block0']['bn1']['scale'],
                                sd['layer3.0.bn1.weight'])
  # the converted tree is exactly our encoder's tree
  fresh = build_encoder('resnet18', width=1.0, stem='imagenet').init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
  same = jax.tree_util.tree_map(lambda a, b: np.shape(a) == np.shape(b), dict(fresh),
                                v)
  assert all(jax.tree_util.tree_leaves(same))


def test_files_cli_and_merge(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  sd = _fake_state_dict('resnet18', seed=5)
  src = tmp_path / 'r18.safetensors'
  safetensors_numpy.save_file({'module.' + k: v for k, v in sd.items()}, str(src))
  loaded = convert.load_state_dict(src)
  assert set(loaded) == set(sd)  # DataParallel prefix stripped
  out = tmp_path / 'enc' / 'r18.msgpack'
  convert_cli.main([f'--src={src}', '--arch=resnet18', f'--out={out}'])
  enc = convert.load_encoder(out, arch='resnet18', in_channels=1)
  direct = resnet_convert.convert_torch_resnet(sd, 'resnet18')
  jax.tree_util.tree_map(np.testing.assert_array_equal, enc, direct)
  assert convert.load_encoder_meta(out)['normalize'] == 'imagenet'
  with pytest.raises(ValueError, match='in_channels=1 encoder'):
    convert.load_encoder(out, in_channels=3)

  model = heads.ClassifierModel(build_encoder('resnet18', width=1.0, stem='imagenet'), 4)
  fresh = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), train=False)
  merged = convert.merge_into(fresh, enc)
  np.testing.assert_array_equal(merged['params']['encoder']['conv_init']['kernel'],
                                direct['params']['conv_init']['kernel'])
  assert merged['params']['head']['kernel'].shape == (512, 4)
  narrow = heads.ClassifierModel(build_encoder('resnet18', width=0.5, stem='imagenet'), 4)
  with pytest.raises(ValueError, match='does not fit the model'):
    convert.merge_into(narrow.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))), enc)


def test_pth_file_roundtrip(tmp_path):
  torch = pytest.importorskip('torch')
  sd = _fake_state_dict('resnet18', seed=6)
  path = tmp_path / 'r18.pth'
  torch.save({'state_dict': {k: torch.from_numpy(v) for k, v in sd.items()}, 'epoch': 90},
             path)
  loaded = convert.load_state_dict(path)
  assert set(loaded) == set(sd)
  np.testing.assert_array_equal(loaded['fc.weight'], sd['fc.weight'])
