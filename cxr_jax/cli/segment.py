"""Train a lung segmenter (a small U-Net) on datasets with lung masks; predict masks.

    python -m cxr_jax.cli.segment --workdir=W --train=cxr_collection:DIR[:OPTIONS] \
        [--train=covid_qu_ex:DIR:config=lung] [--external=covid_qu_ex:DIR:config=infection] \
        [--size=64] [--steps=300] [--batch_size=16]

--train (repeatable) names prepared-on-first-use datasets as BUILDER:MANUAL_DIR[:OPTIONS]
(OPTIONS: builder options joined by '+', e.g. config=infection+size=128; size defaults to
--size). Images whose `has_mask` is false are left out. The patients of the --holdout
splits (default val,test) are held out: none of their images is trained on, and the Dice
on them is the held-out score. --external sets are evaluated whole (never trained on).

Writes W/weights.msgpack ({'params', 'batch_stats'}), W/segmenter.json (architecture,
input size, training data, steps, Dice per evaluation set with a 95% patient-bootstrap CI),
Orbax checkpoints under W/ckpt (a killed run resumes) and W/metrics.jsonl. Training is
`cxr_jax.train.loop.run_job` with the loss BCE + soft Dice, AdamW with cosine decay, random
horizontal flips.

`cxr_jax.models.segmenter.load(W).predict_masks(images)` gives lung masks at the images' own size; the attention
analysis uses them with config.explain.masks='segmenter:W'.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxr_jax.data import pipeline
from cxr_jax.eval import bootstrap
from cxr_jax.models.segmenter import save
from cxr_jax.models.segmenter import Segmenter
from cxr_jax.models.unet import UNet
from cxr_jax.train import loop
from cxr_jax.train import sharding

log = logging.getLogger('cxr_jax')


# ------------------------------------------------------------------------ loss and metric

def dice_bce_loss(logits, masks, eps: float = 1.0):
  """Mean over images of BCE (per pixel) + soft Dice loss 1 - (2 sum(p y) + eps) /
  (sum(p) + sum(y) + eps), p = sigmoid(logits).

  Args:
    logits: [B, H, W] float. masks: [B, H, W] in {0, 1}.
  """
  masks = masks.astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, masks).mean(axis=(1, 2))
  p = jax.nn.sigmoid(logits)
  inter = (p * masks).sum(axis=(1, 2))
  soft_dice = (2 * inter + eps) / (p.sum(axis=(1, 2)) + masks.sum(axis=(1, 2)) + eps)
  return jnp.mean(bce + 1.0 - soft_dice)


def dice(pred, true) -> np.ndarray:
  """Dice 2|P ∩ T| / (|P| + |T|) of binary masks, per image; 1.0 when both are empty.

  Args:
    pred, true: [N, H, W] (nonzero = inside).

  Returns:
    [N] float64.
  """
  p = np.asarray(pred) > 0
  t = np.asarray(true) > 0
  if p.shape != t.shape:
    raise ValueError(f'masks of different shapes: {p.shape} and {t.shape}')
  p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
  inter = (p & t).sum(1)
  total = p.sum(1) + t.sum(1)
  return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


# ------------------------------------------------------------------------------- data

@dataclasses.dataclass
class MaskedSet:
  """Images with lung masks, all at one size: image [N, S, S, 1] uint8, mask [N, S, S]
  uint8, patient_id [N] str, split [N] str."""
  name: str
  image: np.ndarray
  mask: np.ndarray
  patient_id: np.ndarray
  split: np.ndarray


def parse_spec(text: str, size: int) -> ml_collections.ConfigDict:
  """'BUILDER:MANUAL_DIR[:OPTIONS]' (options joined by '+') -> a data spec with size=."""
  parts = text.split(':', 2)
  if len(parts) < 2 or not parts[0] or not parts[1]:
    raise ValueError(f'{text!r}: give BUILDER:MANUAL_DIR[:OPTIONS], e.g. '
                     'covid_qu_ex:/data/COVID-QU-Ex:config=lung')
  options = [o for o in (parts[2].split('+') if len(parts) > 2 else []) if o]
  if not any(o.startswith('size=') for o in options):
    options.append(f'size={size}')
  return ml_collections.ConfigDict(dict(name=parts[0], manual_dir=parts[1],
                                        options=','.join(options)))


def read_masked(spec, data_dir: Path, key: str) -> MaskedSet:
  """Every split's images that have a lung mask, as grayscale [N, S, S, 1] uint8."""
  builder = pipeline.get_builder(spec, data_dir, key=key)
  features = builder.info.features
  if 'mask' not in features:
    raise ValueError(f'{key}: dataset {builder.name!r} has no lung masks (fields '
                     f'{sorted(features)})')
  fields = ('image', 'mask', 'patient_id') + (('has_mask',) if 'has_mask' in features else ())
  parts = []
  for split in sorted(builder.info.splits):
    got = pipeline.read_all(pipeline.get_source(builder, split, key), fields)
    keep = got['has_mask'].astype(bool) if 'has_mask' in got else np.ones(len(got['mask']), bool)
    got = {k: v[keep] for k, v in got.items()}
    got['split'] = np.full(int(keep.sum()), split)
    parts.append(got)
  cat = lambda k: np.concatenate([p[k] for p in parts])
  image = cat('image')
  if image.dtype != np.uint8:  # 16-bit storage: to 8 bits
    image = (image.astype(np.float64) / np.iinfo(image.dtype).max * 255).round().astype(np.uint8)
  if image.shape[-1] != 1:
    image = image.mean(axis=-1, keepdims=True).round().astype(np.uint8)
  return MaskedSet(name=builder.name, image=image, mask=(cat('mask')[..., 0] > 0).astype(np.uint8),
                   patient_id=cat('patient_id').astype(str), split=cat('split'))


class _Arrays:
  """A random-access source of equal-length arrays (for `pipeline.make_loader`)."""

  def __init__(self, **columns):
    self._columns = columns
    self._n = len(next(iter(columns.values())))

  def __len__(self):
    return self._n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self._columns.items()}


# ---------------------------------------------------------------------------- training

def make_step(model, tx):
  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    x = batch['image'].astype(jnp.float32) / 255.0
    y = batch['mask']
    flip = jax.random.bernoulli(rng, 0.5, (x.shape[0],))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    y = jnp.where(flip[:, None, None], y[:, :, ::-1], y)

    def loss_of(params):
      logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                    x, train=True, mutable=['batch_stats'])
      return dice_bce_loss(logits, y), updates['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state), {'loss': loss}
  return loop.checked(step)


def train(workdir: Path, train_set: MaskedSet, *, features, steps: int, batch_size: int,
          lr: float, seed: int, mesh) -> dict:
  """Trains the U-Net on `train_set` with `loop.run_job`; returns its variables."""
  size = train_set.image.shape[1]
  model = UNet(features=tuple(features))
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 10 + 1), steps),
                   weight_decay=1e-4)

  def init_state():
    v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 1)), train=False)
    state = loop.TrainState(step=jnp.zeros((), jnp.int32), params=v['params'],
                            batch_stats=v['batch_stats'], opt_state=tx.init(v['params']),
                            extra={}, rng=loop.fresh_rng(seed))
    return sharding.replicate(state, mesh)

  source = _Arrays(image=train_set.image, mask=train_set.mask)
  loader = pipeline.make_loader(source, batch_size=min(batch_size, len(source)), seed=seed,
                                fields=('image', 'mask'))
  job = loop.Job(name='segment', directory=workdir, num_steps=steps, init_state=init_state,
                 train_step=jax.jit(make_step(model, tx), donate_argnums=0),
                 loader=loader, mesh=mesh, checkpoint_every=max(50, steps // 4), log_every=25)
  writer = loop.MetricWriter(workdir)
  try:
    state = loop.run_job(job, writer)
  finally:
    writer.close()
  return {'params': jax.device_get(state.params), 'batch_stats': jax.device_get(state.batch_stats)}


def dice_summary(segmenter: Segmenter, masked: MaskedSet, n_boot: int = 1000) -> dict:
  """Mean Dice with a 95% patient-bootstrap CI on `masked` (masks compared at its size)."""
  d = dice(segmenter.predict_masks(masked.image), masked.mask)
  lo, hi = bootstrap.percentile_ci(bootstrap.weighted_mean_resamples(
      d, masked.patient_id, n_boot, 0))
  return {'dice': float(d.mean()), 'ci': [lo, hi], 'images': int(len(d)),
          'patients': int(len(np.unique(masked.patient_id)))}


def _subset(s: MaskedSet, keep, name: str) -> MaskedSet:
  return MaskedSet(name, s.image[keep], s.mask[keep], s.patient_id[keep], s.split[keep])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--train', action='append', required=True,
                      help='BUILDER:MANUAL_DIR[:OPTIONS], repeatable')
  parser.add_argument('--external', action='append', default=[],
                      help='BUILDER:MANUAL_DIR[:OPTIONS] evaluated whole, repeatable')
  parser.add_argument('--holdout', default='val,test',
                      help="splits of the --train sets whose patients are held out ('' = none)")
  parser.add_argument('--size', type=int, default=64, help='input side (pixels)')
  parser.add_argument('--features', default='8,16,32,64', help='U-Net channels per level')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--data_dir', default='', help="TFDS data_dir ('' = <workdir>/tfds)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO)

  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data_dir = Path(args.data_dir or workdir / 'tfds')
  features = [int(f) for f in args.features.split(',') if f]
  holdout = [s for s in args.holdout.split(',') if s]
  train_parts, held_parts = [], []
  for i, text in enumerate(args.train):
    s = read_masked(parse_spec(text, args.size), data_dir, f'--train[{i}]')
    held_patients = set(s.patient_id[np.isin(s.split, holdout)])
    held = np.isin(s.patient_id, list(held_patients))  # every image of a held-out patient
    train_parts.append(_subset(s, ~held, s.name))
    if held.any():
      held_parts.append(_subset(s, held, f'{s.name} (held-out patients)'))
  train_set = MaskedSet('train', *(np.concatenate([getattr(p, f) for p in train_parts])
                                   for f in ('image', 'mask', 'patient_id', 'split')))
  if len(train_set.image) == 0:
    raise SystemExit('no training images with lung masks left after the hold-out')
  mesh = sharding.make_mesh()
  variables = train(workdir, train_set, features=features, steps=args.steps,
                    batch_size=args.batch_size, lr=args.lr, seed=args.seed, mesh=mesh)
  seg = Segmenter(variables, features, args.size)
  evaluations = {'train': dice_summary(seg, train_set)}
  for p in held_parts:
    evaluations[p.name] = dice_summary(seg, p)
  for i, text in enumerate(args.external):
    ext = read_masked(parse_spec(text, args.size), data_dir, f'--external[{i}]')
    evaluations[f'{ext.name} (external)'] = dice_summary(seg, ext)
  meta = {'trained_on': args.train, 'holdout_splits': holdout, 'external': args.external,
          'steps': args.steps, 'batch_size': args.batch_size, 'lr': args.lr,
          'seed': args.seed, 'train_images': int(len(train_set.image)),
          'train_patients': int(len(np.unique(train_set.patient_id))),
          'dice': evaluations}
  save(workdir, variables, features, args.size, meta)
  print(json.dumps(evaluations, indent=2))


if __name__ == '__main__':
  main()
