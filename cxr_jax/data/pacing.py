"""Data-difficulty curricula: difficulty scores and a paced Grain sampler.

Curriculum by data (Hacohen & Weinshall, ICML 2019): sort the training examples from
easy to hard by a difficulty score, and at step t draw the batch uniformly from the
easiest g(t) * N of them, where g is a pacing function (`curriculum.pacing_fraction`)
growing from a starting fraction to 1.

The sampler is a pure function of (seed, step): the batch of step t never depends on
what was drawn before, so a run resumed at step t (from a checkpointed Grain iterator,
or from a fresh sampler asked for step t) sees the same data as an uninterrupted one.

Difficulty scores (higher = harder), all [N] float arrays in dataset-index order:
  image_statistic_difficulty(images, 'entropy' | 'contrast')   from the pixels
  metadata_difficulty(column)                                   from a metadata column
`difficulty_from_config(config.curriculum.difficulty, read_field)` picks one of them by
the config string ('entropy' | 'contrast' | 'metadata:<field>'), its one parser.
"""
from __future__ import annotations

import math
import sys
from typing import Callable

import grain
import numpy as np

STATISTICS = ('entropy', 'contrast')
DIFFICULTY_KINDS = STATISTICS + ('metadata:<field>',)  # config.curriculum.difficulty


def _unit_range(images: np.ndarray) -> tuple[np.ndarray, float]:
  """Images as float64 with their nominal maximum (255 for uint8, 65535 for uint16, 1)."""
  if images.dtype == np.uint8:
    return images.astype(np.float64), 255.0
  if images.dtype == np.uint16:
    return images.astype(np.float64), 65535.0
  return images.astype(np.float64), 1.0


def image_statistic_difficulty(images: np.ndarray, statistic: str = 'entropy',
                               bins: int = 256) -> np.ndarray:
  """Per-image difficulty from pixel statistics (a cheap, model-free heuristic).

  Args:
    images: [N, H, W] or [N, H, W, C]; uint8 (range 0..255), uint16 (0..65535) or
      float (taken as 0..1, values outside are clipped).
    statistic:
      'entropy'   Shannon entropy in bits of the image's intensity histogram over
                  `bins` equal bins of the nominal range: busier images are harder.
      'contrast'  minus the RMS contrast, -std(x / max): flat, low-contrast
                  radiographs (under/over-exposed, subtle findings) are harder.
    bins: histogram bins for 'entropy'.
  Returns:
    [N] float64 difficulty, higher = harder.
  """
  if statistic not in STATISTICS:
    raise ValueError(f'difficulty statistic must be one of {STATISTICS}, got {statistic!r}')
  images = np.asarray(images)
  if images.ndim not in (3, 4) or images.shape[0] == 0:
    raise ValueError(f'images must be [N, H, W] or [N, H, W, C] with N > 0, got {images.shape}')
  scores = np.empty(images.shape[0], np.float64)
  for i, image in enumerate(images):  # one image at a time: bounded memory
    x, top = _unit_range(image)
    x = np.clip(x / top, 0.0, 1.0).ravel()
    if statistic == 'contrast':
      scores[i] = -np.std(x)
    else:
      counts = np.bincount(np.minimum((x * bins).astype(np.int64), bins - 1), minlength=bins)
      p = counts[counts > 0] / x.size
      scores[i] = -np.sum(p * np.log2(p))
  return scores


def metadata_difficulty(column, higher_is_harder: bool = True) -> np.ndarray:
  """Difficulty from a per-example metadata column (e.g. a severity grade, a reader's
  confidence), in dataset-index order.

  Args:
    column: [N] numbers.
    higher_is_harder: False flips the sign (e.g. for a severity grade, where larger,
      more visible findings are easier).
  Returns:
    [N] float64 difficulty.
  """
  values = np.asarray(column, np.float64)
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f'a difficulty column must be a non-empty [N] vector, got {values.shape}')
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise ValueError(f'difficulty column has {bad.size} non-finite values, first at row {bad[0]}')
  return values if higher_is_harder else -values


def difficulty_from_config(kind: str, read_field: Callable[[str], np.ndarray]
                           ) -> np.ndarray:
  """The difficulty named by `config.curriculum.difficulty`, in dataset-index order.

  Args:
    kind: 'entropy' | 'contrast' (`image_statistic_difficulty` of the images), or
      'metadata:<field>' (`metadata_difficulty` of that column, higher = harder).
    read_field: name -> the data set's column of that field in index order; called once,
      with 'image' for a statistic or '<field>' for metadata, after `kind` is checked.
  Returns:
    [N] float64 difficulty, higher = harder.
  Raises:
    ValueError: `kind` is none of the above (the message names the config field).
  """
  field = check_difficulty(kind)
  if field is None:
    return image_statistic_difficulty(read_field('image'), kind)
  return metadata_difficulty(read_field(field))


def check_difficulty(kind: str) -> str | None:
  """Checks a `config.curriculum.difficulty` value; returns its metadata field, or None
  for an image statistic. Raises ValueError naming the config key otherwise."""
  if kind in STATISTICS:
    return None
  prefix, _, field = str(kind).partition(':')
  if prefix == 'metadata' and field:
    return field
  raise ValueError(f'config.curriculum.difficulty must be one of {" | ".join(DIFFICULTY_KINDS)}'
                   f' (e.g. metadata:severity), got {kind!r}')


class PacedSampler:
  """A Grain sampler drawing batches from the easiest g(step) fraction of the data.

  Global record index i (Grain's sampler index) belongs to step t = i // batch_size at
  position i % batch_size. The batch of step t is `batch_size` distinct examples drawn
  uniformly, without replacement, from the `visible(t)` easiest ones, with an RNG seeded
  by (seed, t) only: deterministic, and independent of the steps before it.

  Use it as `grain.DataLoader(data_source=..., sampler=PacedSampler(...),
  shard_options=grain.sharding.ShardByJaxProcess(drop_remainder=True),
  operations=[..., grain.transforms.Batch(batch_size // jax.process_count())])`:
  the DataLoader gives process p the global indices p, p + P, p + 2P, ..., so each
  process's local batch b is the slice `batch_indices(b)[p::P]` of global step b
  (`process_batch_indices`), and the processes' batches together form the global batch.

  Attributes:
    order: [N] record keys from easiest to hardest (stable argsort of the difficulty).
  """

  def __init__(self, difficulty: np.ndarray, pacing: Callable, batch_size: int, seed: int,
               num_steps: int | None = None, min_visible: int | None = None):
    """
    Args:
      difficulty: [N] scores, higher = harder (ties keep index order).
      pacing: g(step) -> fraction in (0, 1], e.g. `curriculum.make_pacing(spec, steps)`.
      batch_size: the global batch size (all processes together).
      seed: non-negative int.
      num_steps: if given, the sampler ends after this many steps (len = steps * batch).
      min_visible: the fewest examples ever visible (default: batch_size, so that a
        batch never repeats an example when N >= batch_size).
    """
    difficulty = np.asarray(difficulty, np.float64)
    if difficulty.ndim != 1 or difficulty.size == 0:
      raise ValueError(f'difficulty must be a non-empty [N] vector, got {difficulty.shape}')
    if not np.all(np.isfinite(difficulty)):
      raise ValueError(f'difficulty has non-finite values, first at index '
                       f'{int(np.flatnonzero(~np.isfinite(difficulty))[0])}')
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    if seed < 0:
      raise ValueError(f'seed must be non-negative, got {seed}')
    self.order = np.argsort(difficulty, kind='stable')
    self.num_records = difficulty.size
    self.pacing = pacing
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.num_steps = num_steps
    self.min_visible = min(self.num_records, batch_size if min_visible is None else min_visible)
    self._cache: dict[int, np.ndarray] = {}

  def visible(self, step: int) -> int:
    """The number of easiest examples the batch of `step` is drawn from:
    clip(ceil(g(step) N), min_visible, N)."""
    n = math.ceil(float(self.pacing(step)) * self.num_records - 1e-9)
    return int(min(self.num_records, max(n, self.min_visible, 1)))

  def batch_indices(self, step: int) -> np.ndarray:
    """[batch_size] record keys of global step `step` (all processes)."""
    if step < 0:
      raise IndexError(f'step must be non-negative, got {step}')
    keys = self._cache.get(step)
    if keys is None:
      n = self.visible(step)
      rng = np.random.default_rng((self.seed, step))
      positions = rng.choice(n, size=self.batch_size, replace=n < self.batch_size)
      keys = self.order[positions]
      if len(self._cache) >= 4:
        self._cache.clear()
      self._cache[step] = keys
    return keys

  def process_batch_indices(self, step: int, process_index: int | None = None,
                            process_count: int | None = None) -> np.ndarray:
    """This process's share of step `step`, as a Grain DataLoader with
    ShardByJaxProcess reads it: `batch_indices(step)[process_index::process_count]`."""
    if process_index is None or process_count is None:
      import jax  # only here: the sampler itself runs in Grain workers without jax
      process_index, process_count = jax.process_index(), jax.process_count()
    if self.batch_size % process_count:
      raise ValueError(f'the global batch ({self.batch_size}) must divide over '
                       f'{process_count} processes')
    return self.batch_indices(step)[process_index::process_count]

  def __len__(self) -> int:
    return sys.maxsize if self.num_steps is None else self.num_steps * self.batch_size

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or index >= len(self):
      raise IndexError(f'PacedSampler index {index} out of range [0, {len(self)})')
    step, position = divmod(int(index), self.batch_size)
    key = int(self.batch_indices(step)[position])
    # a per-record RNG for random transforms, deterministic in (seed, index)
    rng = np.random.Generator(np.random.Philox(key=[self.seed, int(index)]))
    return grain.RecordMetadata(index=int(index), record_key=key, rng=rng)

  def __repr__(self) -> str:
    return (f'PacedSampler(num_records={self.num_records}, batch_size={self.batch_size}, '
            f'seed={self.seed}, num_steps={self.num_steps})')
