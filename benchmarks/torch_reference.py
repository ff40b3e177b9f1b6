"""A plain PyTorch implementation of the benchmarked pretraining step (the reference).

The same model, loss and optimiser as cxr_jax's step, written the way a PyTorch user
would (solo-learn / lightly style), so the ratio ours / torch means something:

  * ResNet-18/34/50 v1.5, 1 input channel, imagenet stem (7x7/2 conv, 3x3/2 max-pool),
    width multiplier, BN momentum 0.1 (= flax 0.9), eps 1e-5, last BN of a block at 0.
  * SimCLR: v2 projector (Linear(no bias)-BN-ReLU x (L-1), Linear), NT-Xent over 2B
    anchors, both views in one forward pass (as cxr_jax.ssl.simclr).
    BYOL: online encoder-projector-predictor, EMA target, 2 - 2 cos, symmetrised.
  * LARS exactly as optax.lars (weight decay, then trust ratio on kernels only, lr,
    heavy-ball momentum), or SGD + momentum (nesterov) as cxr_jax.train.optim 'sgd'.
  * Augmentation (only with scope 'full'): the same operations and amplitudes as
    cxr_jax.data.augment, batched on the same device: per-example random resized crop
    (affine_grid + bilinear grid_sample), flip, brightness, contrast, gamma, Gaussian
    blur (grouped conv), noise. It is a cost equivalent, not a bit-equivalent.

On GPU: channels_last memory format and autocast to bfloat16 (AMP) when asked.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _bn(c, zero=False):
  bn = nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)
  if zero:
    nn.init.zeros_(bn.weight)
  return bn


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, f, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, f, 3, stride, 1, bias=False)
    self.bn1 = _bn(f)
    self.conv2 = nn.Conv2d(f, f, 3, 1, 1, bias=False)
    self.bn2 = _bn(f, zero=True)
    self.down = None
    if stride != 1 or cin != f:
      self.down = nn.Sequential(nn.Conv2d(cin, f, 1, stride, bias=False), _bn(f))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.down is None else self.down(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, f, stride):
    super().__init__()
    out = 4 * f
    self.conv1 = nn.Conv2d(cin, f, 1, bias=False)
    self.bn1 = _bn(f)
    self.conv2 = nn.Conv2d(f, f, 3, stride, 1, bias=False)  # v1.5: stride on the 3x3
    self.bn2 = _bn(f)
    self.conv3 = nn.Conv2d(f, out, 1, bias=False)
    self.bn3 = _bn(out, zero=True)
    self.down = None
    if stride != 1 or cin != out:
      self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), _bn(out))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.down is None else self.down(x)))


_SPECS = {'resnet18': (BasicBlock, (2, 2, 2, 2)), 'resnet34': (BasicBlock, (3, 4, 6, 3)),
          'resnet50': (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
  """ResNet v1.5 encoder, 1-channel input, global-average-pooled features [B, C]."""

  def __init__(self, name='resnet18', width=1.0, in_channels=1):
    super().__init__()
    block, sizes = _SPECS[name]
    c = lambda n: max(1, int(round(n * width)))
    self.stem = nn.Sequential(nn.Conv2d(in_channels, c(64), 7, 2, 3, bias=False), _bn(c(64)),
                              nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    layers, cin = [], c(64)
    for i, n in enumerate(sizes):
      for j in range(n):
        layers.append(block(cin, c(64 * 2**i), 2 if i > 0 and j == 0 else 1))
        cin = c(64 * 2**i) * block.expansion
    self.layers = nn.Sequential(*layers)
    self.num_features = cin
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    return self.layers(self.stem(x)).mean(dim=(2, 3))


def mlp(cin, hidden, out, layers):
  """Linear(no bias)-BN-ReLU x (layers-1), then Linear (cxr_jax.models.heads)."""
  mods = []
  for _ in range(layers - 1):
    mods += [nn.Linear(cin, hidden, bias=False), nn.BatchNorm1d(hidden, momentum=0.1),
             nn.ReLU(inplace=True)]
    cin = hidden
  return nn.Sequential(*mods, nn.Linear(cin, out))


def nt_xent(z1, z2, temperature):
  """SimCLR's NT-Xent over 2B anchors (as cxr_jax.ssl.simclr.nt_xent)."""
  z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
  n, b = z.shape[0], z1.shape[0]
  logits = z @ z.t() / temperature
  logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float('-inf'))
  targets = torch.cat([torch.arange(b, n), torch.arange(0, b)]).to(z.device)
  return F.cross_entropy(logits, targets)


class Lars:
  """optax.lars: g += wd * p (kernels); g *= tc * |p| / |g| (kernels, 1 if either is 0);
  u = -lr * g; m = momentum * m + u; p += m."""

  def __init__(self, params, lr, weight_decay=1e-6, momentum=0.9, trust_coefficient=1e-3):
    self.params = [p for p in params if p.requires_grad]
    self.lr, self.wd, self.mom, self.tc = lr, weight_decay, momentum, trust_coefficient
    self.buf = [torch.zeros_like(p) for p in self.params]

  @torch.no_grad()
  def step(self):
    for p, m in zip(self.params, self.buf):
      g = p.grad
      if p.ndim > 1:  # kernels: decay and trust ratio; biases and BN excluded
        g = g.add(p, alpha=self.wd)
        pn, gn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        trust = torch.where((pn > 0) & (gn > 0), self.tc * pn / gn, torch.ones_like(pn))
        g = g * trust
      m.mul_(self.mom).add_(g, alpha=-self.lr)
      p.add_(m)

  def zero_grad(self):
    for p in self.params:
      p.grad = None


def make_optimizer(name, params, lr=0.3):
  if name == 'lars':
    return Lars(params, lr)
  if name == 'sgd':
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-6)
  raise ValueError(f'unknown optimizer {name!r}')


# ----------------------------------------------------------------------------- augmentation

def augment(images, out_size, strength=1.0, min_scale=0.2, max_log_ratio=math.log(4 / 3),
            flip_prob=0.5, brightness=0.4, contrast=0.4, gamma=0.4, blur_prob=0.5,
            blur_sigma=1.5, noise_std=0.05):
  """One view per image of a float [B, 1, H, W] batch in [0, 1] (cxr_jax.data.augment's
  operations, batched in torch). Returns [B, 1, out_size, out_size]."""
  b, dev, s = images.shape[0], images.device, strength
  u = lambda: torch.rand(b, device=dev)
  sym = lambda: 2 * torch.rand(b, device=dev) - 1
  area = 1 - (1 - min_scale) * s * u()
  ratio = torch.exp(max_log_ratio * s * sym())
  fw = torch.minimum(torch.maximum(torch.sqrt(area * ratio), area), torch.ones_like(area))
  fh = area / fw
  cy, cx = (1 - fh) * (2 * u() - 1), (1 - fw) * (2 * u() - 1)  # box centre in [-1, 1] units
  theta = torch.zeros(b, 2, 3, device=dev)
  theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = fw, cx, fh, cy
  grid = F.affine_grid(theta, (b, 1, out_size, out_size), align_corners=False)
  x = F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)
  flip = (u() < flip_prob * s).view(b, 1, 1, 1)
  x = torch.where(flip, x.flip(-1), x)
  x = x * (1 + brightness * s * sym()).view(b, 1, 1, 1)
  m = x.mean(dim=(1, 2, 3), keepdim=True)
  x = (x + (contrast * s * sym()).view(b, 1, 1, 1) * (x - m)).clamp(0, 1)
  x = x.pow(torch.exp(gamma * s * sym()).view(b, 1, 1, 1))
  radius = max(0, min(math.ceil(3 * blur_sigma), out_size - 1))
  if radius:
    sigma = (blur_sigma * s * (0.1 + 0.9 * u())).clamp_min(1e-3)
    taps = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps[None] / sigma[:, None])**2)
    k = (k / k.sum(1, keepdim=True)).view(b, 1, 1, -1)
    y = x.view(1, b, out_size, out_size)  # one group per example: per-example kernels
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode='reflect'), k, groups=b)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode='reflect'), k.transpose(2, 3), groups=b)
    x = torch.where((u() < blur_prob * s).view(b, 1, 1, 1), y.view_as(x), x)
  x = x + (noise_std * s * u()).view(b, 1, 1, 1) * torch.randn_like(x)
  return x.clamp(0, 1)


# ----------------------------------------------------------------------------- the step

class Step:
  """One pretraining step in torch: `step(images_or_views)`; returns the loss tensor.

  Args:
    model_name, width: the encoder.
    method: 'simclr' | 'byol'.
    res: view side. batch: images per step (2 * batch views).
    optimizer: 'lars' | 'sgd'.
    scope: 'full' (uint8 images -> augmentation -> model/loss/update) or 'model'
      (precomputed views -> model/loss/update).
    device: 'cpu' | 'cuda'. amp: autocast to bfloat16. channels_last: NHWC memory format.
    compile: wrap the model (and loss) in torch.compile.
  """

  def __init__(self, model_name='resnet18', width=1.0, method='simclr', res=128, batch=64,
               optimizer='lars', scope='model', device='cpu', amp=False,
               channels_last=False, compile=False, temperature=0.2, proj_hidden=512,
               proj_dim=128, proj_layers=None, pred_hidden=512, ema=0.996):
    self.method, self.res, self.batch, self.scope = method, res, batch, scope
    self.device, self.amp, self.channels_last, self.temperature = device, amp, channels_last, temperature
    self.ema = ema
    enc = ResNet(model_name, width)
    layers = proj_layers or (3 if method == 'simclr' else 2)
    proj = mlp(enc.num_features, proj_hidden, proj_dim, layers)
    modules = [enc, proj]
    if method == 'byol':
      modules.append(mlp(proj_dim, pred_hidden, proj_dim, 2))
    elif method != 'simclr':
      raise ValueError(f'torch reference has simclr and byol, not {method!r}')
    self.online = nn.Sequential(*modules).to(device)
    if channels_last:
      self.online = self.online.to(memory_format=torch.channels_last)
    self.target = None
    if method == 'byol':
      self.target = nn.Sequential(*[m for m in _copy(nn.Sequential(enc, proj))]).to(device)
      if channels_last:
        self.target = self.target.to(memory_format=torch.channels_last)
      for p in self.target.parameters():
        p.requires_grad_(False)
    self.opt = make_optimizer(optimizer, self.online.parameters())
    self.forward = torch.compile(self._forward) if compile else self._forward

  def _views(self, x):
    if self.scope == 'model':
      return x
    images = x.float() / 255.0
    return augment(images, self.res), augment(images, self.res)

  def _forward(self, v1, v2):
    x = torch.cat([v1, v2])
    if self.channels_last:
      x = x.contiguous(memory_format=torch.channels_last)
    b = v1.shape[0]
    if self.method == 'simclr':
      z = self.online(x)
      return nt_xent(z[:b], z[b:], self.temperature)
    p = self.online(x)
    with torch.no_grad():
      t = self.target(x)
    p, t = F.normalize(p.float(), dim=-1), F.normalize(t.float(), dim=-1)
    # symmetrised: prediction of view 1 against target of view 2 and vice versa
    return (2 - 2 * (p[:b] * t[b:]).sum(-1)).mean() + (2 - 2 * (p[b:] * t[:b]).sum(-1)).mean()

  def __call__(self, x):
    self.online.train()
    v1, v2 = self._views(x)
    with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.amp):
      loss = self.forward(v1, v2)
    self.opt.zero_grad()
    loss.backward()
    self.opt.step()
    if self.target is not None:
      with torch.no_grad():
        for t, o in zip(self.target.parameters(), self.online.parameters()):
          t.mul_(self.ema).add_(o, alpha=1 - self.ema)
    return loss

  def inputs(self, seed=0):
    """A fixed input for `__call__`: uint8 images [B,1,H,W] (scope 'full') or a pair of
    float views [B,1,res,res] (scope 'model')."""
    g = torch.Generator().manual_seed(seed)
    if self.scope == 'full':
      return torch.randint(0, 256, (self.batch, 1, self.res, self.res), generator=g,
                           dtype=torch.uint8).to(self.device)
    return tuple(torch.rand(self.batch, 1, self.res, self.res, generator=g).to(self.device)
                 for _ in range(2))

  def sync(self, result):
    if self.device == 'cuda':
      torch.cuda.synchronize()
    return result


def _copy(module):
  import copy
  return copy.deepcopy(module)
