"""What a run's config must satisfy beyond its locked ConfigDict, and the workdir guard.

`configs/default.py` sets every field (its comments document them); these checks catch
what a locked ConfigDict cannot: entries of the stage list, names, choices between fields.
"""
from __future__ import annotations

import datetime
import json
import logging
import re
from pathlib import Path

import jax
import ml_collections

from cxr_jax import ssl
from cxr_jax import vocab
from cxr_jax.train import workdir as workdir_lib

log = logging.getLogger('cxr_jax')

STAGE_KEYS = ('name', 'data', 'steps', 'batch_size', 'image_size', 'strength', 'temperature',
              'ema_momentum', 'keep_head', 'keep_optimizer', 'keep_target')
AUGMENT_ON = ('device', 'host')
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


def validate(config: ml_collections.ConfigDict):
  """Raises ValueError naming the config key at fault."""
  ssl.get_method(config.pretrain.method)
  names = []
  for i, stage in enumerate(config.pretrain.stages):
    unknown = sorted(set(stage.keys()) - set(STAGE_KEYS))
    if unknown:
      raise ValueError(f'config.pretrain.stages[{i}]: unknown key(s) {unknown}; '
                       f'a stage has {list(STAGE_KEYS)}')
    missing = sorted(set(STAGE_KEYS) - set(stage.keys()))
    if missing:
      raise ValueError(f'config.pretrain.stages[{i}]: missing key(s) {missing}')
    if not _NAME.match(stage.name):
      raise ValueError(f'config.pretrain.stages[{i}].name={stage.name!r}: use letters, digits, _ . -')
    if stage.steps <= 0:
      raise ValueError(f'config.pretrain.stages[{i}].steps must be > 0, got {stage.steps}')
    names.append(stage.name)
  if len(set(names)) != len(names):
    raise ValueError(f'config.pretrain.stages: stage names must be unique, got {names}')
  for init in inits(config):
    if init not in vocab.REGIMES:
      raise ValueError(f'config.finetune.inits: unknown init {init!r}; choose from {vocab.REGIMES}')
    if init in ('curricular', 'ssl') and not names:
      raise ValueError(f'config.finetune.inits has {init!r} but config.pretrain.stages is empty')
    if init == 'imagenet' and not config.finetune.imagenet_checkpoint:
      raise ValueError('config.finetune.inits has "imagenet" but '
                       'config.finetune.imagenet_checkpoint is empty')
  for protocol in protocols(config):
    if protocol not in vocab.PROTOCOLS:
      raise ValueError(f'config.finetune.protocols: unknown protocol {protocol!r}; '
                       f'choose from {vocab.PROTOCOLS}')
  if config.augment_on not in AUGMENT_ON:
    raise ValueError(f"config.augment_on must be 'device' or 'host', got {config.augment_on!r}")
  if config.augment_on == 'host' and config.curriculum.pacing.kind != 'none':
    raise ValueError("config.augment_on='host' needs config.curriculum.pacing.kind='none' "
                     '(the paced sampler feeds a DataLoader without per-step views)')
  if config.pretrain.init not in ('scratch', 'imagenet'):
    raise ValueError(f"config.pretrain.init must be 'scratch' or 'imagenet', got {config.pretrain.init!r}")
  if 'ssl' in inits(config):
    ssl_stage_index(config.pretrain)


def inits(config) -> list[str]:
  """The regimes of config.finetune.inits, in the config's order."""
  return vocab.comma_list(config.finetune.inits)


def protocols(config) -> list[str]:
  """The protocols of config.finetune.protocols, in the config's order."""
  return vocab.comma_list(config.finetune.protocols)


def ssl_stage_index(pretrain: ml_collections.ConfigDict) -> int:
  """The stage the 'ssl' regime runs alone: pretrain.ssl_stage, or the last."""
  names = [s.name for s in pretrain.stages]
  name = pretrain.ssl_stage or names[-1]
  if name not in names:
    raise ValueError(f'config.pretrain.ssl_stage={name!r} is not a stage; stages: {names}')
  return names.index(name)


def _flatten(value, prefix=''):
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      out.update(_flatten(v, f'{prefix}{k}.'))
    return out
  if isinstance(value, (list, tuple)):
    out = {}
    for i, v in enumerate(value):
      out.update(_flatten(v, f'{prefix[:-1]}[{i}].'))
    return out
  return {prefix[:-1]: value}


def _allowed(key: str, allowed: list[str]) -> bool:
  """Whether config.allow_changes covers `key`: named, or a key above it."""
  return any(key == a or key.startswith(a + '.') or key.startswith(a + '[') for a in allowed)


def _checkpoint_steps(workdir: Path) -> dict[str, int]:
  """{job folder: its latest checkpoint step} of the workdir's pretraining stages
  (<folder>/<stage>/ckpt) and fine-tuning cells (<folder>/<init>/<fraction>/seed<k>/ckpt)."""
  out = {}
  for ckpt in sorted([*workdir.glob('*/*/ckpt'), *workdir.glob('*/*/*/seed*/ckpt')]):
    steps = [int(p.name) for p in ckpt.iterdir() if p.name.isdigit()]
    if steps:
      out[str(ckpt.parent.relative_to(workdir))] = max(steps)
  return out


def read_config_json(path: Path) -> dict:
  """The config a workdir's config.json records; RunError naming the file when it is
  not a JSON object (a torn or foreign file)."""
  try:
    saved = json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    saved = e
  if not isinstance(saved, dict):
    why = saved if isinstance(saved, Exception) else f'a JSON {type(saved).__name__}'
    raise workdir_lib.RunError(
        f'{path} is not the config of a run ({why}). Restore it, or move it aside: the next '
        'run then records its own config there and resumes from the checkpoints it finds.')
  return saved


def check_or_write_config(config: ml_collections.ConfigDict, workdir: Path):
  """Writes <workdir>/config.json, or refuses a workdir that holds another config's run.

  `config.allow_changes` (comma-separated keys; a key covers the keys under it) names the
  differences to accept: e.g. `pretrain.optimizer.lr` to resume a diverged stage from its
  last finite checkpoint with a lower learning rate. An accepted change is recorded in
  config.json: the new values, and an entry of its 'amendments' list (time, changes
  {key: [old, new]}, the latest checkpoint step of every job at that time)."""
  path = workdir / 'config.json'
  current = json.loads(config.to_json_best_effort())
  allowed = vocab.comma_list(current.pop('allow_changes', ''))
  if not path.exists():
    if jax.process_index() == 0:
      workdir_lib.write_text(path, json.dumps(current, indent=2, sort_keys=True))
    return
  saved = read_config_json(path)
  amendments = saved.pop('amendments', [])
  if saved == current:
    return
  a, b = _flatten(saved), _flatten(current)
  changes = {k: [a.get(k, '<absent>'), b.get(k, '<absent>')]
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
  refused = [k for k in changes if not _allowed(k, allowed)]
  if refused:
    diff = [f'{k}: {changes[k][0]!r} -> {changes[k][1]!r}' for k in refused]
    raise ValueError(
        f'{workdir} holds a run of a different config ({path}); differences:\n  '
        + '\n  '.join(diff[:20]) + '\nUse a new --workdir, or the same config to resume, '
        'or accept the change with --config.allow_changes=' + ','.join(refused[:20])
        + ' (e.g. a lower learning rate; the checkpoints must still fit the model).')
  log.warning('%s: config changes accepted by config.allow_changes: %s', path,
              '; '.join(f'{k}: {o!r} -> {n!r}' for k, (o, n) in changes.items()))
  if jax.process_index() == 0:
    amendments.append({'time': datetime.datetime.now().isoformat(timespec='seconds'),
                       'changes': changes, 'checkpoints': _checkpoint_steps(workdir)})
    workdir_lib.write_text(path, json.dumps(dict(current, amendments=amendments), indent=2,
                                            sort_keys=True))
