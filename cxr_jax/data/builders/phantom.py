"""Synthetic chest-radiograph phantoms: the `phantom` TFDS builder (renderer: phantom_render).

No real chest X-ray can be fetched at run time, so the demo and most tests train on these
procedural images. Each one is a frontal (PA) radiograph-like picture with exact lung
masks, a study-level class carried only by opacities inside the lungs, and an optional
burned-in marker outside the lungs that the training split may correlate with the label
(a confounder, so that a model that reads the marker instead of the lungs is caught by
its lung-attention share and by its drop on the unconfounded test split).

Classes, in the spirit of SIIM-FISABIO-RSNA COVID-19 (see `CLASS_NAMES`):
  negative       no opacity
  typical        bilateral, peripheral, multifocal ground-glass (soft, faint) opacities
  indeterminate  unilateral, central (perihilar) opacities, often subtle
  atypical       one dense lobar consolidation in a lower zone, or a pleural effusion

Multi-label findings (option `findings=True`, off by default): `targets` float32 [4] in
`FINDINGS` order, drawn independently of each other from a separate random stream (the
default phantom's images and labels do not change):
  opacity       1 for any non-negative class (the class's opacities above)
  effusion      fluid filling the base of one lung (prevalence FINDING_PREVALENCE)
  cardiomegaly  an enlarged heart shadow overlapping the medial lower lungs
  device        a bright line (a tube or catheter) running down from the neck

Build it (no TensorFlow needed; writes ArrayRecord):

  b = Phantom(config=make_config(size=64), data_dir=d, file_format='array_record')
  b.download_and_prepare()
  b.as_data_source()['train'][0]   # dict of numpy arrays, Text as bytes

The images themselves are drawn by `cxr_jax/data/phantom_render.py` (`render`,
`add_findings`; its names are re-exported here). Contact sheet of examples with mask
(cyan) and lesion (red) outlines, and the renderer's speed:

  python -m cxr_jax.cli.phantom --contact_sheet=docs/phantom.png
  python -m cxr_jax.cli.phantom --benchmark   # images per second, one core
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from cxr_jax.data.phantom_render import (  # noqa: F401  (re-exported: the phantom's names)
    ATYPICAL, CLASS_NAMES, FINDING_PREVALENCE, FINDINGS, INDETERMINATE, NEGATIVE, NO_MARKER,
    NUM_MARKERS, TYPICAL, add_findings, render)
from cxr_jax.data.schema import UNLABELED, core_features

_FINDINGS_STREAM = 1  # appended to an example's seed: the findings' own random stream

# Split order fixes the per-split random streams: changing it would change every image.
SPLITS = ('unlabeled', 'train', 'val', 'test')
_CONFOUNDED_SPLITS = ('train', 'val')


def split_labels(n: int, class_probs, rng: np.random.Generator) -> np.ndarray:
  """[n] int64 class labels in proportion to `class_probs`, shuffled.

  Counts are fixed by largest-remainder rounding (n * p, then the leftover to the
  largest fractions) rather than sampled, so a 100-image labeled split with uniform
  probabilities holds exactly 25 of each class.
  """
  p = np.asarray(class_probs, np.float64)
  exact = n * p / p.sum()
  counts = np.floor(exact).astype(int)
  counts[np.argsort(-(exact - counts), kind='stable')[:n - counts.sum()]] += 1
  return rng.permutation(np.repeat(np.arange(len(p)), counts)).astype(np.int64)


def example_marker(rng: np.random.Generator, split: str, label: int,
                   strength: float) -> int:
  """The marker of one example: equal to its label with probability `strength` in the
  confounded splits (train, val); otherwise uniform over {-1 (none), 0, 1, 2, 3}."""
  if split in _CONFOUNDED_SPLITS and rng.uniform() < strength:
    return int(label)
  return int(rng.integers(NO_MARKER, NUM_MARKERS))


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`: independent of generation order, and
  disjoint between splits (the split's position in `SPLITS` is part of the seed)."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


def followup_rng(seed: int, split: str, patient: int, visit: int) -> np.random.Generator:
  """The generator of a patient's follow-up image `visit` (>= 1): a stream apart from
  every `example_rng`, so follow-ups leave the first images unchanged."""
  return np.random.default_rng([seed, SPLITS.index(split), patient, visit, 1])


# ----------------------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class PhantomConfig(tfds.core.BuilderConfig):
  """Options of the phantom dataset (see `make_config`).

  Attributes:
    size: storage side in pixels (images are [size, size, 1]).
    num_unlabeled: images in the `unlabeled` split (pretraining pool).
    num_train: images in the small labeled `train` split.
    num_val: images in `val` (same distribution as train, confounder included).
    num_test: images in `test` (marker independent of the label).
    seed: base seed; every example's generator derives from (seed, split, index).
    confounder_strength: probability in [0, 1] that a train/val example's marker
      equals its label; otherwise the marker is uniform over none/0/1/2/3.
    class_probs: class proportions, in `CLASS_NAMES` order (normalised).
    findings: add the multi-label `targets` (FINDINGS) and draw them (`add_findings`).
    images_per_patient: images of each patient in every split (consecutive examples):
      the first as with 1, the others follow-ups (same anatomy, findings, class and
      marker; another position, size and exposure: `render`'s `followup`) sharing its
      `patient_id`. 1 (default) gives exactly the dataset of before this option.
  """
  size: int = 64
  num_unlabeled: int = 2000
  num_train: int = 100
  num_val: int = 200
  num_test: int = 400
  seed: int = 0
  confounder_strength: float = 0.0
  class_probs: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
  findings: bool = False
  images_per_patient: int = 1

  def __post_init__(self):
    # Fail at construction, naming the option, rather than deep inside generation.
    if not isinstance(self.size, (int, np.integer)) or self.size < 16:
      raise ValueError(f'phantom: size must be an int >= 16, got {self.size!r}')
    for split in SPLITS:
      n = getattr(self, f'num_{split}')
      if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f'phantom: num_{split} must be an int >= 1, got {n!r}')
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f'phantom: seed must be an int >= 0, got {self.seed!r}')
    if not 0.0 <= self.confounder_strength <= 1.0:
      raise ValueError('phantom: confounder_strength must be in [0, 1], got '
                       f'{self.confounder_strength!r}')
    if (not isinstance(self.images_per_patient, (int, np.integer))
        or self.images_per_patient < 1):
      raise ValueError('phantom: images_per_patient must be an int >= 1, got '
                       f'{self.images_per_patient!r}')
    p = np.asarray(self.class_probs, np.float64)
    if p.shape != (len(CLASS_NAMES),) or (p < 0).any() or p.sum() <= 0:
      raise ValueError(f'phantom: class_probs must be {len(CLASS_NAMES)} non-negative '
                       f'numbers ({CLASS_NAMES}) with a positive sum, got '
                       f'{self.class_probs!r}')
    if not isinstance(self.findings, (bool, np.bool_)):
      raise ValueError(f'phantom: findings must be True or False, got {self.findings!r}')
    self.class_probs = tuple(float(v) for v in p / p.sum())


OPTIONS = tuple(f.name for f in dataclasses.fields(PhantomConfig)
                if f.name not in {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)})


def _fmt(v: float) -> str:
  return f'{v:g}'


def make_config(**overrides) -> PhantomConfig:
  """A `PhantomConfig` with `overrides` applied, named after its values.

  The name (e.g. 's64_u2000_t100_v200_te400_seed0_conf0.8') is a function of the
  values, so two different option sets never share a TFDS folder, and the same options
  always find the data already built.

  Raises:
    ValueError: for an unknown option (the message lists the known ones) or a bad value.
  """
  unknown = sorted(set(overrides) - set(OPTIONS))
  if unknown:
    raise ValueError(f'phantom: unknown option(s) {unknown}; known options: {list(OPTIONS)}')
  values = {f.name: f.default for f in dataclasses.fields(PhantomConfig)
            if f.name in OPTIONS}
  values.update(overrides)
  cfg = PhantomConfig(name='tmp', **values)  # validates and normalises class_probs
  name = (f's{cfg.size}_u{cfg.num_unlabeled}_t{cfg.num_train}_v{cfg.num_val}'
          f'_te{cfg.num_test}_seed{cfg.seed}_conf{_fmt(cfg.confounder_strength)}')
  if not np.allclose(cfg.class_probs, 1.0 / len(CLASS_NAMES)):
    name += '_p' + '-'.join(_fmt(round(p, 4)) for p in cfg.class_probs)
  if cfg.findings:
    name += '_findings'
  if cfg.images_per_patient != 1:
    name += f'_ipp{cfg.images_per_patient}'
  cfg.name = name
  cfg.description = f'Phantom chest radiographs, options {values}.'
  return cfg


# `python -m` runs this file as __main__ after the package import has already
# registered 'phantom'; a second registration would raise, so that copy opts out.
class Phantom(tfds.core.GeneratorBasedBuilder):
  """Synthetic chest radiographs with exact lung and lesion masks (see module doc)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'First release.',
                   '1.1.0': '`image` stored uncompressed (fast reads); masks stay zlib.'}
  BUILDER_CONFIGS = [dataclasses.replace(make_config(), name='default',
                                         description='Default options (see PhantomConfig).')]
  DEFAULT_CONFIG_NAME = 'default'
  CLASS_NAMES = CLASS_NAMES
  SSL_SPLIT = 'unlabeled'
  EXTRA_MASKS = 'lesion,marker'

  @property
  def FINDING_NAMES(self) -> tuple[str, ...]:  # pylint: disable=invalid-name
    return FINDINGS if self.builder_config.findings else ()

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    findings = ({'targets': tfds.features.Tensor(shape=(len(FINDINGS),), dtype=np.float32)}
                if self.builder_config.findings else {})
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=core_features(
            s,
            lesion=tfds.features.Tensor(shape=(s, s, 1), dtype=np.uint8, encoding='zlib'),
            confounder=tfds.features.Scalar(dtype=np.int64),
            true_label=tfds.features.Scalar(dtype=np.int64),
            severity=tfds.features.Scalar(dtype=np.float32),
            **findings,
        ),
        # Records stay in index order, so `source[i]` is example i ('phantom-<split>-<i>').
        disable_shuffling=True,
        homepage='https://github.com/cxr_jax',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    cfg = self.builder_config
    n, k = getattr(cfg, f'num_{split}'), cfg.images_per_patient
    labels = split_labels(-(-n // k), cfg.class_probs,  # one label per patient
                          np.random.default_rng([cfg.seed, SPLITS.index(split)]))
    for i in range(n):
      patient, visit = divmod(i, k)
      rng = example_rng(cfg.seed, split, patient)
      true_label = int(labels[patient])
      marker = example_marker(rng, split, true_label, cfg.confounder_strength)
      out = render(rng, true_label, cfg.size, marker, followup=followup_rng(
          cfg.seed, split, patient, visit) if visit else None)
      key = f'phantom-{split}-{i}'
      patient_id = key if k == 1 else f'phantom-{split}-patient{patient}'
      extra = {}
      if cfg.findings:  # own stream, drawn per patient (follow-ups share the findings);
        # the class, marker and anatomy above are unchanged
        out['image'], extra['targets'] = add_findings(
            np.random.default_rng([cfg.seed, SPLITS.index(split), patient, _FINDINGS_STREAM]),
            out['image'], out['mask'], true_label)
      yield i, dict(
          image=out['image'], mask=out['mask'], lesion=out['lesion'], has_mask=True,
          label=UNLABELED if split == 'unlabeled' else true_label,
          true_label=true_label, confounder=marker, severity=np.float32(out['severity']),
          patient_id=patient_id, id=key, **extra)
