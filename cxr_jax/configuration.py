"""What a run's config must satisfy beyond its locked ConfigDict, and the workdir guard.

`configs/default.py` sets every field (its comments document them); these checks catch
what a locked ConfigDict cannot: entries of the stage list, names, choices between fields.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import re
from pathlib import Path

import jax
import ml_collections

from cxr_jax import curriculum
from cxr_jax import regimes
from cxr_jax import ssl
from cxr_jax import vocab
from cxr_jax.data import pacing
from cxr_jax.data import pipeline
from cxr_jax.data import schema
from cxr_jax.explain import sanity
from cxr_jax.models import segmenter
from cxr_jax.models.registry import ENCODERS
from cxr_jax.train import optim
from cxr_jax.train import workdir as workdir_lib

log = logging.getLogger('cxr_jax')

STAGE_KEYS = ('name', 'data', 'steps', 'batch_size', 'image_size', 'strength', 'temperature',
              'ema_momentum', 'keep_head', 'keep_optimizer', 'keep_target', 'positives',
              'method')
POSITIVES = ('image', 'patient')
AUGMENT_ON = ('device', 'host')
DTYPES = ('float32', 'bfloat16', 'float16', 'auto')  # auto: platform.compute_dtype
STEMS = ('imagenet', 'small')
_NAME = re.compile(r'^[A-Za-z0-9_.-]+$')


class ConfigError(ValueError):
  """A config value (or the data it names) that the run cannot use; the message names the
  key at fault and what it allows, and launch.py prints it alone (no traceback)."""


@contextlib.contextmanager
def _as_config_error():
  """Re-raises a plain ValueError of the checks below as ConfigError: the modules they
  call (ssl, curriculum, data, explain) raise ValueErrors naming the key. Subclasses (the
  data's own errors: DataIdentityError, DataValidationError, ...) keep their types."""
  try:
    yield
  except ValueError as e:
    if type(e) is not ValueError:  # pylint: disable=unidiomatic-typecheck
      raise
    raise ConfigError(str(e)) from e


def validate(config: ml_collections.ConfigDict):
  """Checks every value of a run's config before any compute; raises ConfigError naming
  the key at fault and what it allows."""
  with _as_config_error():
    _validate(config)


def _validate(config: ml_collections.ConfigDict):
  ssl.get_method(config.pretrain.method)
  for name in ssl.METHODS:
    if name not in config.pretrain:
      raise ValueError(f'config.pretrain.{name}: missing; every method of cxr_jax.ssl.METHODS '
                       'has its settings there (its module\'s DEFAULTS)')
  _run_fields(config)
  _model(config.model)
  names = _stages(config)
  _curricula(config)
  _finetune(config, names)
  if config.augment_on == 'host' and config.curriculum.pacing.kind != 'none':
    raise ValueError("config.augment_on='host' needs config.curriculum.pacing.kind='none' "
                     '(the paced sampler feeds a DataLoader without per-step views)')
  curriculum.make_pacing(config.curriculum.pacing, 100, 'config.curriculum.pacing')
  pacing.check_difficulty(config.curriculum.difficulty)
  if config.pretrain.init not in ('scratch', 'imagenet'):
    raise ValueError(f"config.pretrain.init must be 'scratch' or 'imagenet', got {config.pretrain.init!r}")
  _at_least('config.pretrain.monitor_every', config.pretrain.monitor_every, 0)
  if config.pretrain.match not in regimes.MATCH:
    raise ValueError(f'config.pretrain.match must be one of {regimes.MATCH} (what ssl_matched '
                     f'matches the curriculum in), got {config.pretrain.match!r}')
  _optimizer('config.pretrain.optimizer', config.pretrain.optimizer)
  for name in ssl.METHODS:  # a method's optimizer recipe, applied on top of the global one
    if config.pretrain[name].get('optimizer', None):
      _optimizer(f'config.pretrain.{name}.optimizer (on top of config.pretrain.optimizer)',
                 ssl.optimizer_config(config.pretrain, name))
  e = config.explain
  _at_least('config.explain.num_overlays', e.num_overlays, 0)
  if e.stage not in (0, 1, 2, 3, 4, 'auto'):
    raise ValueError("config.explain.stage must be 'auto' (the last stage whose map is at "
                     'least 8x8), 0 (the last) or an encoder stage 1-4 (ResNet stage, '
                     f'DenseNet block), got {e.stage!r}')
  for kind in vocab.comma_list(e.randomise):
    if kind not in sanity.RANDOMISATIONS:
      raise ValueError(f'config.explain.randomise: {kind!r}; choose from '
                       f'{sanity.RANDOMISATIONS} (comma-separated)')
  segmenter.mask_choice(e.masks)
  if e.data.name and not e.data.split:
    raise ValueError('config.explain.data.split: empty; name the split of '
                     f'{e.data.name!r} to explain (e.g. test)')


def _at_least(key: str, value, low, kind=int):
  """`value` is a number of `kind` (bools are not numbers here) and >= low."""
  ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
  if not ok or value < low:
    name = 'an integer' if kind is int else 'a number'
    raise ValueError(f'{key} must be {name} >= {low}, got {value!r}')


def _one_of(key: str, value, choices):
  if value not in choices:
    raise ValueError(f'{key} must be one of {tuple(choices)}, got {value!r}')


def _run_fields(config):
  _at_least('config.worker_count', config.worker_count, -1)  # -1: platform.num_workers
  _at_least('config.read_threads', config.read_threads, 0)
  for key in ('checkpoint_every', 'log_every', 'eval_batch_size'):
    _at_least(f'config.{key}', config[key], 1)
  if config.augment_on not in AUGMENT_ON:
    raise ValueError(f"config.augment_on must be 'device' or 'host', got {config.augment_on!r}")


def _model(m):
  _one_of('config.model.name', m.name, sorted(ENCODERS))
  _at_least('config.model.width', m.width, 0, float)
  if m.width <= 0:
    raise ValueError(f'config.model.width must be > 0, got {m.width!r}')
  _one_of('config.model.stem', m.stem, STEMS)
  _one_of('config.model.dtype', m.dtype, DTYPES)


def _optimizer(key: str, o):
  _one_of(f'{key}.name', o.name, optim.OPTIMIZERS)
  _one_of(f'{key}.lr_scaling', o.lr_scaling, optim.LR_SCALINGS)
  for field in ('lr', 'weight_decay'):
    _at_least(f'{key}.{field}', o[field], 0, float)
  if o.lr <= 0:
    raise ValueError(f'{key}.lr must be > 0, got {o.lr!r}')
  _at_least(f'{key}.base_batch_size', o.base_batch_size, 1)
  _at_least(f'{key}.warmup_steps', o.warmup_steps, 0)


def _schedule_range(key: str, spec, steps: int, low: float, high: float | None):
  """The schedule builds and its values over the stage stay in [low, high]."""
  fn = curriculum.make_schedule(spec, steps, key)
  values = [float(fn(t)) for t in sorted({0, steps // 2, steps})]
  bad = [v for v in values if v < low or (high is not None and v > high)]
  if bad:
    allowed = f'[{low:g}, {high:g}]' if high is not None else f'>= {low:g}'
    raise ValueError(f'{key} must stay in {allowed}, but reaches {bad[0]:g}')


def _stages(config, where: str = 'config.pretrain.stages') -> list[str]:
  """Checks the stage list config.pretrain.stages (`where` names it in errors: a named
  curriculum is checked as the stage list of `curriculum_config`)."""
  names = []
  for i, stage in enumerate(config.pretrain.stages):
    key = f'{where}[{i}]'
    unknown = sorted(set(stage.keys()) - set(STAGE_KEYS))
    if unknown:
      raise ValueError(f'{key}: unknown key(s) {unknown}; a stage has {list(STAGE_KEYS)}')
    missing = sorted(set(STAGE_KEYS) - set(stage.keys()))
    if missing:
      raise ValueError(f'{key}: missing key(s) {missing}')
    if not _NAME.match(stage.name):
      raise ValueError(f'{key}.name={stage.name!r}: use letters, digits, _ . -')
    if not isinstance(stage.steps, int) or stage.steps <= 0:
      raise ValueError(f'{key}.steps must be > 0, got {stage.steps}')
    _at_least(f'{key}.batch_size', stage.batch_size, 1)
    _schedule_range(f'{key}.image_size', stage.image_size, stage.steps, 8, None)
    _schedule_range(f'{key}.strength', stage.strength, stage.steps, 0.0, 1.0)
    _schedule_range(f'{key}.temperature', stage.temperature, stage.steps, 1e-6, None)
    _one_of(f'{key}.positives', stage.positives, POSITIVES)
    if stage.positives == 'patient' and config.curriculum.pacing.kind != 'none':
      raise ValueError(f"{key}.positives='patient' needs config.curriculum.pacing.kind='none' "
                       '(the paced sampler brings no second image)')
    if stage.ema_momentum.kind != 'method':
      _schedule_range(f'{key}.ema_momentum', stage.ema_momentum, stage.steps, 0.0, 1.0)
    _stage_method(config, i, where)
    names.append(stage.name)
  if len(set(names)) != len(names):
    raise ValueError(f'{where}: stage names must be unique, got {names}')
  return names


def _curricula(config):
  """Each named curriculum (config.pretrain.curricula.<name>) is a valid stage list."""
  for name in regimes.curricula(config):
    where = f'config.pretrain.curricula.{name}'
    if not _NAME.match(name):
      raise ValueError(f'{where}: use letters, digits, _ . - in a curriculum\'s name')
    if not isinstance(config.pretrain.curricula[name], (list, tuple)) or \
        not config.pretrain.curricula[name]:
      raise ValueError(f'{where}: a non-empty list of stages (configs/common.stage), like '
                       'config.pretrain.stages')
    _stages(regimes.curriculum_config(config, name), where)


def _stage_method(config, i: int, where: str = 'config.pretrain.stages'):
  """The stage's method exists, its settings and optimizer overrides are valid, and it can
  run the stage: pretext tasks build their own inputs on the device, so they need
  config.augment_on='device' and positives='image'; a change of method from the stage
  before hands over the encoder only, so keep_optimizer=True there is an error."""
  stage, key = config.pretrain.stages[i], f'{where}[{i}]'
  if stage.method:
    ssl.get_method(stage.method, f'{key}.method')
  name = ssl.stage_method(config.pretrain, i)
  method = ssl.get_method(name)
  if name in ssl.PRETEXT_TASKS:
    if config.augment_on == 'host':
      raise ValueError(f"{key}.method: the pretext task {name!r} builds its inputs on the "
                       "device; it needs config.augment_on='device' (host augmentation cuts "
                       'two views)')
    if stage.positives == 'patient':
      raise ValueError(f"{key}.positives='patient' needs a two-view method "
                       f'{ssl.TWO_VIEW_METHODS}; the stage runs the pretext task {name!r}')
  if i > 0 and stage.keep_optimizer and ssl.stage_method(config.pretrain, i - 1) != name:
    raise ValueError(f'{key}.keep_optimizer=True: the stage runs {name!r} after '
                     f'{ssl.stage_method(config.pretrain, i - 1)!r}; only the encoder carries '
                     'over between methods, the optimizer state cannot')
  if hasattr(method, 'check'):
    sizes = curriculum.make_schedule(stage.image_size, stage.steps, f'{key}.image_size')
    smallest = min(int(round(float(sizes(t)) / 8) * 8) for t in sorted({0, stage.steps // 2, stage.steps}))
    method.check(config.pretrain[name], smallest, f'config.pretrain.{name}')


def _finetune(config, stage_names):
  ft = config.finetune
  for init in regimes.inits(config):
    _init(config, init)
    if (init in ('curricular', 'ssl', 'ssl_matched') or init.startswith('alone:')) \
        and not stage_names:
      raise ValueError(f'config.finetune.inits has {init!r} but config.pretrain.stages is empty')
    if init == 'imagenet' and not ft.imagenet_checkpoint:
      raise ValueError('config.finetune.inits has "imagenet" but '
                       'config.finetune.imagenet_checkpoint is empty')
  if not regimes.inits(config):
    raise ValueError('config.finetune.inits is empty; give at least one of '
                     f'{vocab.REGIMES}')
  if not regimes.protocols(config):
    raise ValueError(f'config.finetune.protocols is empty; give at least one of {vocab.PROTOCOLS}')
  for protocol in regimes.protocols(config):
    if protocol not in vocab.PROTOCOLS:
      raise ValueError(f'config.finetune.protocols: unknown protocol {protocol!r}; '
                       f'choose from {vocab.PROTOCOLS}')
  if {'ssl', 'ssl_matched'} & set(regimes.inits(config)) or any(
      i.startswith('alone:') for i in regimes.inits(config)):
    regimes.ssl_stage_index(config.pretrain)
  fractions = list(ft.label_fractions)
  if not fractions or any(isinstance(f, bool) or not isinstance(f, (int, float)) or
                          not 0 < f <= 1 for f in fractions):
    raise ValueError('config.finetune.label_fractions must be fractions in (0, 1] of the '
                     f'train split\'s patients, got {tuple(fractions)}')
  for key in ('num_seeds', 'steps', 'batch_size', 'eval_every'):
    _at_least(f'config.finetune.{key}', ft[key], 1)
  _at_least('config.finetune.image_size', ft.image_size, 8)
  _at_least('config.finetune.strength', ft.strength, 0, float)
  if ft.strength > 1:
    raise ValueError(f'config.finetune.strength must be in [0, 1], got {ft.strength!r}')
  _optimizer('config.finetune.optimizer', ft.optimizer)
  if not isinstance(config.explain.finding, str):
    raise ValueError('config.explain.finding must be a finding name (a string), got '
                     f'{config.explain.finding!r}')
  findings = ft.data.get('findings', '')
  if not isinstance(findings, str):
    raise ValueError("config.finetune.data.findings must be a string: '' (the single "
                     "label), 'all' or comma-separated finding names, got "
                     f'{findings!r}')


def _init(config, init: str):
  """`init` is a regime: one of vocab.REGIMES, alone:<method of cxr_jax.ssl.METHODS>,
  curriculum:<name> or ssl_matched:<name> of config.pretrain.curricula."""
  family, name = vocab.split_regime(init)
  if init in vocab.REGIMES:
    return
  names = regimes.curricula(config)
  if family == 'alone' and name in ssl.METHODS:
    index = regimes.ssl_stage_index(config.pretrain)
    try:  # the method must be able to run the target stage
      _stage_method(regimes.alone_config(config, name), 0)
    except ValueError as e:
      raise ValueError(f'config.finetune.inits: {init} cannot run the target stage '
                       f'config.pretrain.stages[{index}]: {e}') from e
    return
  if family in ('curriculum', 'ssl_matched') and name in names:
    return
  if family == 'alone':
    why = f'{name!r} is not a method; choose from {ssl.METHODS}'
  elif family in ('curriculum', 'ssl_matched'):
    why = (f'{name!r} is not a curriculum of config.pretrain.curricula '
           f'(it has {names or "none"})')
  else:
    why = (f'choose from {vocab.REGIMES}, alone:<method>, curriculum:<name> or '
           'ssl_matched:<name> (a name of config.pretrain.curricula)')
  raise ValueError(f'config.finetune.inits: unknown init {init!r}; {why}')


def check_data(config, data_dir: Path):
  """Opens (preparing on first use) every dataset the run will read and checks its
  splits, before any training: a typo in a split is found in seconds, not after
  pretraining. ConfigError for a split, a dataset or an option that is not there; the
  data's own errors (bad files, other source files than the prepared data's) keep their
  types."""
  with _as_config_error():
    _check_data(config, data_dir)


def _check_data(config, data_dir: Path):
  opened = set()
  for regime in regimes.inits(config):
    if not vocab.pretrain_folder(regime):
      continue
    plan = regimes.regime_plan(config, regime)
    family, name = vocab.split_regime(regime)
    where = (f'config.pretrain.curricula.{name}' if family in ('curriculum', 'ssl_matched')
             else 'config.pretrain.stages')
    for i in plan.indices:
      data = plan.config.pretrain.stages[i].data
      index = regimes.ssl_stage_index(config.pretrain) if family == 'alone' else i
      key = f'{where}[{index}].data'
      seen = json.dumps(data.to_dict(), sort_keys=True, default=str)
      if seen not in opened:
        opened.add(seen)
        pipeline.get_source(pipeline.get_builder(data, data_dir, key=key), data.split,
                            f'{key}.split')
  data = config.finetune.data
  builder = pipeline.get_builder(data, data_dir, key='config.finetune.data')
  for split in ('train_split', 'val_split', 'test_split'):
    pipeline.get_source(builder, data[split], f'config.finetune.data.{split}')
  spec = config.explain.data
  if config.explain.enabled and spec.name:
    pipeline.get_source(pipeline.get_builder(spec, data_dir, key='config.explain.data'),
                        spec.split, 'config.explain.data.split')
  if data.get('findings', ''):  # names against the builder's list of findings
    names, _ = schema.select_findings(builder, data.findings, 'config.finetune.data.findings')
    finding = config.explain.finding
    if finding and finding not in names:
      raise ValueError(f'config.explain.finding={finding!r} is not one of the fine-tuned '
                       f'findings {list(names)} (config.finetune.data.findings)')


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


# keys added to the config after workdirs were written without them: a config.json that
# lacks one resumes when the run has it at this value (the behaviour before the key)
# ('[]' stands for any list index)
ADDED_KEYS = {'explain.umap': False, 'explain.randomise': '', 'explain.data.name': '',
              'explain.data.options': '', 'explain.data.manual_dir': '',
              'explain.data.split': 'test', 'explain.masks': 'dataset',
              'explain.finding': '', 'finetune.data.findings': '',
              'pretrain.stages[].positives': 'image', 'pretrain.stages[].method': '',
              'pretrain.match': 'images'}


def _methods_run(config: dict) -> set[str]:
  """The methods the stages of a config (as JSON) run; their settings matter on resume,
  other methods' settings (config.pretrain.<method>) do not."""
  pretrain = config.get('pretrain', {})
  stages = [*pretrain.get('stages', []),
            *(s for stage_list in (pretrain.get('curricula') or {}).values() for s in stage_list)]
  alone = {i.partition(':')[2] for i in vocab.comma_list(config.get('finetune', {}).get('inits', ''))
           if i.startswith('alone:')}
  return {s.get('method', '') or pretrain.get('method', '') for s in stages} | alone


def _added(key: str) -> str:
  return re.sub(r'\[\d+\]', '[]', key)


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
             for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
             and not (k not in a and _added(k) in ADDED_KEYS and b[k] == ADDED_KEYS[_added(k)])}
  unused = set(ssl.METHODS) - _methods_run(saved) - _methods_run(current)
  changes = {k: v for k, v in changes.items()
             if not (k.startswith('pretrain.') and k.split('.')[1] in unused)}
  if not saved.get('explain', {}).get('enabled') and not current['explain']['enabled']:
    changes.pop('explain.stage', None)  # unused without Grad-CAM (its default became 'auto')
  if not changes:  # only keys added since, at the value that keeps the old behaviour,
    return         # or settings of methods that no stage of either config runs
  refused = [k for k in changes if not _allowed(k, allowed)]
  if refused:
    diff = [f'{k}: {changes[k][0]!r} -> {changes[k][1]!r}' for k in refused]
    raise ConfigError(
        f'{workdir} holds a run of a different config ({path}); differences: '
        + '; '.join(diff[:20]) + ('; ...' if len(diff) > 20 else '')
        + '. Use a new --workdir, or the same config to resume, '
        'or accept the change with --config.allow_changes=' + ','.join(refused[:20])
        + ' (e.g. a lower learning rate; the checkpoints must still fit the model).')
  log.warning('%s: config changes accepted by config.allow_changes: %s', path,
              '; '.join(f'{k}: {o!r} -> {n!r}' for k, (o, n) in changes.items()))
  if jax.process_index() == 0:
    amendments.append({'time': datetime.datetime.now().isoformat(timespec='seconds'),
                       'changes': changes, 'checkpoints': _checkpoint_steps(workdir)})
    workdir_lib.write_text(path, json.dumps(dict(current, amendments=amendments), indent=2,
                                            sort_keys=True))
