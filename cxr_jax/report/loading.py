"""What the report reads from a workdir: result.json, test_predictions.npz, attention.npz,
config.json and metrics.jsonl (nothing else). A file it cannot read (a line of
metrics.jsonl torn by a kill, an unreadable config.json or result.json) is named in a
warning and left out; the report is written from the rest."""
from __future__ import annotations

import collections
import json
import logging
import re
from pathlib import Path

import numpy as np
import ml_dtypes

from cxr_jax import vocab

log = logging.getLogger('cxr_jax')

# the protocol of a result.json that does not name it: its top-level folder's
_FOLDER_PROTOCOLS = {folder: protocol for protocol, folder in vocab.PROTOCOL_FOLDERS.items()}


def _protocol(result: dict, path: Path, workdir: Path) -> str:
  if result.get('protocol'):
    return str(result['protocol'])
  return _FOLDER_PROTOCOLS.get(path.relative_to(workdir).parts[0], 'finetune')


def load_results(workdir) -> list[dict]:
  """Every job's result.json (<W>/<protocol folder>/<init>/<fraction>/seed<k>/), with
  '_dir' (its folder) and 'protocol' filled in."""
  workdir = Path(workdir)
  out = []
  # a fixed depth: never walks the checkpoints or a TFDS data_dir inside the workdir
  for p in sorted(workdir.glob('*/*/*/seed*/result.json')):
    r = read_json(p)
    if not isinstance(r, dict) or 'init' not in r or 'test' not in r:
      continue
    r['_dir'] = str(p.parent)
    r['protocol'] = _protocol(r, p, workdir)
    out.append(r)
  return out


def group_results(results: list[dict]) -> dict[tuple[str, str, float], list[dict]]:
  """{(protocol, init, fraction): results sorted by seed}, in report order."""
  groups = collections.defaultdict(list)
  for r in results:
    groups[(r.get('protocol', 'finetune'), r['init'], float(r['label_fraction']))].append(r)
  order = sorted(groups, key=lambda k: (vocab.protocol_order(k[0]), k[2],
                                        vocab.regime_order(k[1])))
  return {k: sorted(groups[k], key=lambda r: r['seed']) for k in order}


def mean_std(values) -> tuple[float, float]:
  """Mean and std (ddof 1; 0 for one value) of the finite values (None skipped); NaNs
  when there is none."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return float('nan'), float('nan')
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(results: list[dict]) -> dict:
  """{(init, fraction): {metric: (mean, std, n)}} over seeds (protocol 'finetune' only)."""
  table = {}
  for (protocol, init, fraction), rs in group_results(results).items():
    if protocol != 'finetune':
      continue
    metrics = sorted({m for r in rs for m in r['test']})
    table[(init, fraction)] = {m: (*mean_std([r['test'].get(m) for r in rs]), len(rs))
                               for m in metrics}
  return table


def read_json(path: Path):
  """The JSON value of `path`; None, with a warning naming it, when it cannot be read."""
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    log.warning('report: left out %s, which cannot be read (%s)', path, e)
    return None


def _float(a: np.ndarray) -> np.ndarray:
  """bfloat16 arrays that np.savez stored as raw 2-byte voids (runs before they were
  saved as float32) -> float32."""
  if a.dtype.kind == 'V' and a.dtype.itemsize == 2:
    return a.view(ml_dtypes.bfloat16).astype(np.float32)
  return a


def load_npz(path: Path) -> dict | None:
  """The arrays of an .npz file, or None when it does not exist."""
  if not path.exists():
    return None
  with np.load(path, allow_pickle=False) as f:
    return {k: _float(f[k]) for k in f.files}


class Stack:
  """One group's test predictions over seeds: labels [N], probs [N, S, K], groups [N]."""

  def __init__(self, seeds, labels, probs, groups, class_names):
    self.seeds, self.labels, self.probs = list(seeds), labels, probs
    self.groups, self.class_names = groups, list(class_names)

  @property
  def multilabel(self) -> bool:
    """Multi-label findings: labels are float targets [N, F] (NaN = not observed)."""
    return self.labels.ndim == 2

  def same_test_set(self, other: 'Stack') -> bool:
    return (self.labels.shape == other.labels.shape and
            same_labels(self.labels, other.labels) and
            np.array_equal(self.groups, other.groups))

  def seeds_subset(self, seeds) -> np.ndarray:
    idx = [self.seeds.index(s) for s in seeds]
    return self.probs[:, idx]


def stack_predictions(rs: list[dict]) -> tuple[Stack | None, str]:
  """Stacks the seeds' test_predictions.npz; (None, why) when they are missing/unaligned."""
  preds = []
  for r in rs:
    p = load_npz(Path(r['_dir']) / 'test_predictions.npz')
    if p is None:
      return None, f'no test_predictions.npz in {r["_dir"]}'
    preds.append(p)
  first = preds[0]
  for r, p in zip(rs[1:], preds[1:]):
    if (p['labels'].shape != first['labels'].shape or
        not same_labels(p['labels'], first['labels']) or
        not np.array_equal(p['patient_id'], first['patient_id'])):
      return None, f'seed {r["seed"]} was tested on other images than seed {rs[0]["seed"]}'
  probs = np.stack([np.asarray(p['probs'], np.float64) for p in preds], axis=1)
  labels = np.asarray(first['labels'])
  # class indices [N], or multi-label targets [N, F] kept as floats (NaN = not observed)
  labels = labels.astype(np.float64) if labels.ndim == 2 else labels.astype(np.int64)
  groups = np.asarray(first['patient_id'])
  names = rs[0].get('class_names') or [str(k) for k in range(probs.shape[-1])]
  return Stack([r['seed'] for r in rs], labels, probs, groups, names), ''


def same_labels(a, b) -> bool:
  """Equal label arrays, NaN (an unobserved multi-label target) equal to NaN."""
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == 'f')


def is_findings(results: list[dict]) -> bool:
  """Whether these results are of a multi-label findings task."""
  return any(r.get('task') == 'findings' for r in results)


def pretrain_jobs(workdir: Path) -> dict[str, dict]:
  """{pretraining job: its last metrics.jsonl row with a 'train/loss'}, in file order."""
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return {}
  last = {}
  for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:  # torn by a killed run
      log.warning('report: skipped line %d of %s, which is not a JSON row: %.80r', number,
                  path, line)
      continue
    if not isinstance(row, dict):
      continue
    if str(row.get('job', '')).startswith('pretrain/') and 'train/loss' in row:
      last[row['job']] = row
  return last


def stage_methods(workdir: Path) -> dict[str, str]:
  """{stage name: the SSL method or pretext task it ran} from the workdir's config.json
  (a stage's own `method`, else pretrain.method); {} when there is no readable config."""
  path = workdir / 'config.json'
  if not path.exists():
    return {}
  try:
    pretrain = read_json(path)['pretrain']
    return {s['name']: s.get('method', '') or pretrain['method'] for s in pretrain['stages']}
  except (OSError, ValueError, KeyError, TypeError):
    return {}


def phantom_confounding(workdir: Path) -> float:
  """confounder_strength of a phantom fine-tuning dataset (0 when not a phantom / absent)."""
  path = workdir / 'config.json'
  if not path.exists():
    return 0.0
  try:
    data = read_json(path)['finetune']['data']
  except (KeyError, TypeError):
    return 0.0
  if data.get('name') != 'phantom':
    return 0.0
  m = re.search(r'confounder_strength=([0-9.eE+-]+)', str(data.get('options', '')))
  return float(m.group(1)) if m else 0.0


def load_attention(rs: list[dict], groups_fallback=None) -> dict | None:
  """The attention.npz files of one group's seeds, or None when there are none.

  Returns:
    {'seeds': [k], 'arrays': [the dict of each seed's attention.npz], 'groups': [N]
    patient ids (attention.npz's, else test_predictions.npz's, else `groups_fallback`,
    else one per image), 'labels': [N]}; seeds tested on other images than the first
    are left out.
  """
  found = [(r, load_npz(Path(r['_dir']) / 'attention.npz')) for r in rs]
  found = [(r, a) for r, a in found if a is not None]
  if not found:
    return None
  first = found[0][1]
  found = [(r, a) for r, a in found if a['labels'].shape == first['labels'].shape and
           np.array_equal(a['labels'], first['labels'])]
  groups = first.get('patient_id')
  if groups is None:
    preds = load_npz(Path(found[0][0]['_dir']) / 'test_predictions.npz')
    if preds is not None and preds['labels'].shape == first['labels'].shape:
      groups = preds['patient_id']
  if groups is None:
    groups = groups_fallback if groups_fallback is not None else np.arange(len(first['labels']))
  return {'seeds': [r['seed'] for r, _ in found], 'arrays': [a for _, a in found],
          'groups': np.asarray(groups), 'labels': first['labels']}


def load_embeddings(workdir: Path) -> dict[str, dict]:
  """{regime: its <workdir>/embeddings/<init>.npz} (config.explain.umap), in report order;
  a file that cannot be read is named in a warning and left out."""
  out = {}
  for path in sorted(Path(workdir).glob('embeddings/*.npz'),
                     key=lambda p: vocab.regime_order(p.stem)):
    try:
      e = load_npz(path)
    except (OSError, ValueError) as error:  # torn, or not an .npz
      log.warning('report: left out %s, which cannot be read (%s)', path, error)
      continue
    if 'embeddings' not in e or 'labels' not in e:
      log.warning('report: left out %s, which holds no embeddings and labels', path)
      continue
    e['class_names'] = [str(c) for c in e.get('class_names', [])]
    out[path.stem] = e
  return out


def explain_enabled(workdir: Path) -> bool:
  """config.explain.enabled of the run (False when config.json is absent or unreadable)."""
  path = workdir / 'config.json'
  if not path.exists():
    return False
  try:
    return bool(read_json(path)['explain']['enabled'])
  except (KeyError, TypeError, ValueError, OSError):
    return False
