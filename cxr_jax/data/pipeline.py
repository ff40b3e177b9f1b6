"""Input pipeline: a prepared TFDS dataset (ArrayRecord) read through Grain.

source (builder.as_data_source()[split]) -> optional subset (label fraction) ->
IndexSampler (shard by JAX process, shuffle per epoch with a seed) -> field selection ->
batch to the per-host batch -> (optional worker processes) -> numpy batches.

Images stay uint8 on the host; views are cut and augmented on device (augment.py).
The iterator's state can be saved and restored (`get_state` / `set_state`, and by Orbax
through grain.checkpoint), so a resumed run sees the same data order.
"""
from __future__ import annotations

import ast
import json
import os
import pkgutil
import sys
from typing import Sequence

import grain
import jax
import numpy as np

from cxr_jax import platform


def parse_options(text: str, key: str = 'options') -> dict:
  """'size=64,num_train=100' -> {'size': 64, 'num_train': 100} (values as Python literals)."""
  options = {}
  for item in filter(None, (p.strip() for p in _split_top_level(text))):
    if '=' not in item:
      raise ValueError(f'{key}: expected key=value pairs separated by commas, got {item!r} in {text!r}')
    k, v = item.split('=', 1)
    try:
      options[k.strip()] = ast.literal_eval(v.strip())
    except (ValueError, SyntaxError):
      options[k.strip()] = v.strip()
  return options


def _split_top_level(text: str) -> list[str]:
  """Splits on commas outside brackets, so 'p=(0.5,0.5),n=2' keeps the tuple whole."""
  parts, depth, current = [], 0, ''
  for ch in text:
    depth += ch in '([{'
    depth -= ch in ')]}'
    if ch == ',' and depth == 0:
      parts.append(current)
      current = ''
    else:
      current += ch
  return parts + [current]


def get_builder(data_cfg, data_dir: str, key: str = 'data'):
  """The TFDS builder named by a data config, prepared on first use.

  data_cfg fields: name (registered TFDS name, e.g. 'phantom'), options (builder-config
  options 'k=v,...', given to the builder module's `make_config` when it has one, else
  `config=<name>` selects a predefined config), manual_dir (where the user's raw files are;
  a dataset prepared from other files is refused, see `prepare.ensure_prepared`).
  `key` names the config entry in error messages.
  """
  import tensorflow_datasets as tfds  # heavy: tensorflow_datasets
  import cxr_jax.data.builders  # noqa: F401  (registers our builders)
  try:
    cls = tfds.builder_cls(data_cfg.name)
  except Exception as e:  # TFDS raises DatasetNotFoundError with a long list
    raise ValueError(f'{key}.name: no dataset builder named {data_cfg.name!r} '
                     f'(our builders: {sorted(_our_builders())})') from e
  options = parse_options(data_cfg.options, f'{key}.options')
  module = sys.modules[cls.__module__]
  if hasattr(module, 'make_config'):
    try:
      config = module.make_config(**options)
    except TypeError as e:
      raise ValueError(f'{key}.options: {e}') from e
  else:
    config = options.pop('config', None)
    if options:
      raise ValueError(f'{key}.options: builder {data_cfg.name!r} takes only config=NAME, got {options}')
  builder = cls(data_dir=os.fspath(data_dir), config=config, file_format='array_record')
  # Prepared data is opened only if it was built from these options and raw files.
  from cxr_jax.data import prepare  # heavy: imports tensorflow_datasets
  return prepare.ensure_prepared(builder, data_cfg.manual_dir or None, key=f'{key}.manual_dir')


def _our_builders():
  import cxr_jax.data.builders as pkg  # heavy: imports tensorflow_datasets
  return [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith('_')]


def get_source(builder, split: str, key: str = 'data.split'):
  """The random-access source of one split, with an error naming the missing split.

  Readers (`make_loader`, `read_all`) decode only the fields they select: the rest of a
  record (e.g. the zlib-compressed masks, when pretraining reads images) stays undecoded.
  """
  splits = sorted(builder.info.splits)
  if split not in splits:
    raise ValueError(f'{key}: dataset {builder.name!r} has no split {split!r}; '
                     f'its splits are {splits}')
  return SplitSource(builder, split)


class SplitSource:
  """One split of a prepared TFDS dataset, readable with only some fields decoded."""

  def __init__(self, builder, split: str):
    self.builder, self.split = builder, split
    self._full = builder.as_data_source(split)
    self._decoding: dict[tuple[str, ...], object] = {}

  def __len__(self):
    return len(self._full)

  def __getitem__(self, i):
    return self._full[i]

  def decoding(self, fields: Sequence[str]):
    """A source of the same records that decodes only `fields` (others stay bytes)."""
    key = tuple(sorted(fields))
    if key not in self._decoding:
      import tensorflow_datasets as tfds  # heavy: tensorflow_datasets
      features = self.builder.info.features
      missing = [f for f in fields if f not in features]
      if missing:
        raise ValueError(f'dataset {self.builder.name!r} has no field(s) {missing}; its '
                         f'fields are {sorted(features)}')
      skip = {k: tfds.decode.SkipDecoding() for k in features if k not in fields}
      self._decoding[key] = self.builder.as_data_source(self.split, decoders=skip)
    return self._decoding[key]


def decoding(source, fields: Sequence[str]):
  """`source` restricted to decoding `fields` where it supports that, else itself."""
  return source.decoding(fields) if hasattr(source, 'decoding') else source


class Subset:
  """A random-access view of `source` restricted to `indices` (e.g. a label fraction)."""

  def __init__(self, source, indices: Sequence[int]):
    self._source = source
    self._indices = np.asarray(indices, dtype=np.int64)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, i):
    return self._source[int(self._indices[i])]

  def decoding(self, fields: Sequence[str]):
    return Subset(decoding(self._source, fields), self._indices)


class WithColumns:
  """`source`'s records, each also carrying its row of `columns` (small per-example arrays
  held in memory, e.g. the selected findings of a multi-label task)."""

  def __init__(self, source, columns: dict[str, np.ndarray]):
    self._source, self._columns = source, columns

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    record = dict(self._source[i])
    record.update({name: column[i] for name, column in self._columns.items()})
    return record

  def decoding(self, fields: Sequence[str]):
    return WithColumns(decoding(self._source, [f for f in fields if f not in self._columns]),
                       self._columns)


class WithIndex:
  """`source` whose records also carry their position in it, 'index' (for a map that
  needs to know which record it has, e.g. `PatientPositives`)."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    return dict(self._source[i], index=np.int64(i))

  def decoding(self, fields: Sequence[str]):
    return WithIndex(decoding(self._source, [f for f in fields if f != 'index']))


class PatientPositives:
  """Patient-aware positive pairs (MICLe, Azizi et al. 2021): a `map_with_index` that
  turns {'image', 'index', ...} into {'image', 'image2', ...}, image2 being another image
  of the same patient, drawn uniformly among the patient's other images from
  (seed, stream position) (so a resumed iterator draws the same ones, and an image
  meets different partners in different epochs), or the same image when the patient
  has no other.

  source: the records' images (indexable by 'index'); patient_ids: [N] the patient of
  each record (str or bytes).
  """

  def __init__(self, source, patient_ids, seed: int):
    ids = np.asarray(patient_ids)
    if len(ids) != len(source):
      raise ValueError(f'{len(ids)} patient ids for {len(source)} images')
    self._images, self._seed = decoding(source, ('image',)), seed
    _, patient = np.unique(ids, return_inverse=True)
    order = np.argsort(patient, kind='stable')
    groups = np.split(order, np.flatnonzero(np.diff(patient[order])) + 1)
    self._others = [None] * len(ids)
    for group in groups:
      for i in group:
        self._others[i] = group[group != i]

  def others(self, i: int) -> np.ndarray:
    """The indices of the other images of record i's patient."""
    return self._others[i]

  def __call__(self, index: int, record):
    record = dict(record)
    others = self._others[int(record.pop('index'))]
    if others.size:
      j = others[np.random.default_rng([self._seed, int(index)]).integers(others.size)]
      record['image2'] = np.asarray(self._images[int(j)]['image'])
    else:
      record['image2'] = record['image']
    return record


def chain(maps):
  """One `map_with_index` applying `maps` in order (None when there are none)."""
  maps = list(maps)
  if not maps:
    return None
  if len(maps) == 1:
    return maps[0]

  def apply(index, record):
    for fn in maps:
      record = fn(index, record)
    return record
  return apply


class SelectFields(grain.transforms.Map):
  """Keeps the fields the step needs, with fixed dtypes (uint8 images, int32 labels)."""

  def __init__(self, fields: Sequence[str]):
    self._fields = tuple(fields)

  def map(self, record):
    out = {}
    for name in self._fields:
      value = np.asarray(record[name])
      if name == 'label':
        value = value.astype(np.int32)
      out[name] = value
    return out


class EpochShuffle(grain.MapDataset):
  """A new random order of the parent in every epoch (index // len), seeded by
  (seed, epoch): one numpy permutation per epoch.

  Grain's `MapDataset.shuffle` computes each index alone through `index_shuffle`, whose
  cost grows as the dataset shrinks: 430 us per record at 64 records, 25 us at 2,048,
  against 4 us here (`python -m benchmarks.shuffle`, dev machine), i.e. more than reading
  the record for the few-label splits that fine-tuning shuffles every few steps.
  """

  def __init__(self, parent, seed: int):
    super().__init__(parent)
    self._seed = int(seed)
    self._orders: dict[int, np.ndarray] = {}

  def __len__(self):
    return len(self._parent)

  def __str__(self):
    return f'EpochShuffle(seed={self._seed})'

  def _permutation(self, epoch: int) -> np.ndarray:
    order = self._orders.get(epoch)
    if order is None:  # threads racing here compute the same order
      order = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent))
      self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
      self._orders[epoch] = order
    return order

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, len(self._parent))
    return self._parent[int(self._permutation(epoch)[i]) + epoch * len(self._parent)]


def make_loader(source, *, batch_size: int, seed: int, fields: Sequence[str] = ('image',),
                shuffle: bool = True, num_epochs: int | None = None,
                drop_remainder: bool = True, worker_count: int = 0,
                shard: bool = True, read_threads: int = 0, map_with_index=None) -> 'Batches':
  """An iterable of per-host batches of `fields` from `source` (`Batches`).

  batch_size is the per-host batch (global batch / jax.process_count()). Each JAX process
  reads a disjoint, contiguous shard; with `shuffle` the order changes every epoch,
  determined by `seed`. num_epochs=None repeats forever (training); 1 gives one pass
  (evaluation). shard=False gives every process the whole source (small evaluation
  splits). `map_with_index(index, record)`, if given, transforms each record with its
  position in this process's stream (e.g. `host_augment.TwoViews.map_with_index`: the
  step is index // batch_size), in the worker processes when worker_count > 0.

  Built on `grain.MapDataset` (source -> shard -> shuffle, new every epoch -> repeat
  -> fields -> batch), iterated with `read_threads` prefetch threads (0: in the caller's
  thread, the cheapest per image; JAX's asynchronous dispatch already overlaps it with the
  device step) and, with worker_count > 0, that many worker processes (-1: from the
  host's cores, `platform.num_workers`). Its iterator's state is saved and restored
  through grain.checkpoint, and resumes with any worker count (`Batches`). (Grain's DataLoader does the same
  per record through its sampler and 16 read threads by default: 2.4-3x more CPU per
  image on the dev machine, docs/benchmarks.md.)
  """
  n = len(source)
  if n < batch_size and drop_remainder:
    raise ValueError(f'the dataset has {n} examples, fewer than one batch of '
                     f'{batch_size}; lower the batch size')
  ds = grain.MapDataset.source(decoding(source, fields))
  if shard and jax.process_count() > 1:
    p, count = jax.process_index(), jax.process_count()
    per = n // count if drop_remainder else -(-n // count)
    ds = ds[p * per:min(n, (p + 1) * per)]
  if shuffle:
    ds = EpochShuffle(ds, seed)
  ds = ds.repeat(num_epochs).map(SelectFields(fields))
  if map_with_index is not None:
    ds = ds.map_with_index(map_with_index)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  return Batches(ds, read_threads=read_threads,
                 worker_count=platform.num_workers(worker_count))


class Batches:
  """The batches of a `grain.MapDataset`, iterated with `read_threads` prefetch threads
  and `worker_count` worker processes, whose iterators' state is the number of batches
  read, whatever the worker count.

  Grain's own iterator states differ with the worker count (a `mp_prefetch` state lists
  one position per worker), so a checkpoint written with W workers could not be resumed
  with another count (config.worker_count=-1 picks it from the host's cores). Batches
  are random access here, so a position is all a resumed iterator needs: it restarts at
  batch k and yields what an uninterrupted one would (any worker count gives the same
  batches: every record's read and map depend on its index only). The state is
  {'next_index': k}, as Grain's iterator over the same dataset without workers wrote it.
  """

  def __init__(self, batches: 'grain.MapDataset', read_threads: int = 0, worker_count: int = 0):
    self.batches, self.read_threads, self.worker_count = batches, read_threads, worker_count

  def __iter__(self) -> 'BatchIterator':
    return BatchIterator(self)


class BatchIterator:
  """An iterator of `Batches`; `get_state`/`set_state` as grain.checkpoint expects of a
  non-Grain iterator (bytes of JSON), `start_prefetch` as it calls after a restore."""

  def __init__(self, loader: Batches, start: int = 0):
    self._loader = loader
    self._open(start)

  def _open(self, start: int):
    loader = self._loader
    ds = loader.batches[start:] if start else loader.batches
    # prefetch counts batches here: a few in flight, not Grain's default 500
    it = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=loader.read_threads, prefetch_buffer_size=max(1, 2 * loader.read_threads)))
    if loader.worker_count:
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=loader.worker_count))
    self._it, self._next = iter(it), start

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({'next_index': self._next}).encode()

  def set_state(self, state) -> None:
    """Moves to the position of `state`: what `get_state` returned (bytes or str of
    JSON, or its dict), e.g. read from a checkpoint."""
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if 'next_index' not in state:
      raise ValueError(f'not a loader position: {state!r} (expected {{"next_index": k}})')
    close = getattr(self._it, 'close', None)
    if close is not None:  # stops the worker processes of the old position
      close()
    self._open(int(state['next_index']))

  def start_prefetch(self) -> None:
    start = getattr(self._it, 'start_prefetch', None)
    if start is not None:
      start()

  def close(self) -> None:
    """Stops the worker processes, if any (they also stop when the iterator is freed)."""
    close = getattr(self._it, 'close', None)
    if close is not None:
      close()


def per_host_batch(global_batch: int, key: str = 'batch_size') -> int:
  """The per-process share of a global batch; it must divide evenly over devices."""
  if global_batch % jax.device_count():
    raise ValueError(f'{key}={global_batch} must be divisible by the number of devices '
                     f'({jax.device_count()})')
  return global_batch // jax.process_count()


def read_all(source, fields: Sequence[str], batch_size: int = 256) -> dict[str, np.ndarray]:
  """The whole split as numpy arrays, in index order (small evaluation splits)."""
  loader = make_loader(source, batch_size=min(batch_size, len(source)), seed=0, fields=fields,
                       shuffle=False, num_epochs=1, drop_remainder=False, shard=False)
  batches = list(loader)
  return {k: np.concatenate([b[k] for b in batches]) for k in fields}
